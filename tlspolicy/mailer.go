package tlspolicy

import (
	"context"
	"fmt"

	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/store"
)

// ReportTenant owns the TLS-RPT report mails in the ledger, apart from
// every sender's messages.
const ReportTenant = "mailferry-tlsrpt"

// IntakeMailer queues a report mail like any message: a worker signs it
// with the From domain's DKIM keys and delivers it (RFC 8460 5.3).
type IntakeMailer struct {
	Intake   *intake.Intake
	Store    *store.Store
	Hostname string // for the Message-ID if the report lacks one
}

// MailReport queues raw for to, from from.
func (m IntakeMailer) MailReport(ctx context.Context, from, to string, raw []byte) error {
	if err := m.Store.EnsureTenant(ctx, ReportTenant); err != nil {
		return err
	}
	msg, err := mail.ParseRaw(raw, []string{to}, mail.BuildOptions{Hostname: m.Hostname})
	if err != nil {
		return fmt.Errorf("TLS-RPT report mail: %w", err)
	}
	msg.Sender = from
	sub := intake.Submission{TenantID: ReportTenant, Ingress: "api", Message: msg, Tags: []string{"tlsrpt"}}
	r, err := m.Intake.NewReceipt(sub)
	if err != nil {
		return fmt.Errorf("TLS-RPT report mail: %w", err)
	}
	if err := m.Intake.Submit(ctx, r, sub); err != nil {
		return fmt.Errorf("TLS-RPT report mail: %w", err)
	}
	return nil
}
