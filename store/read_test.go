package store

import (
	"testing"
	"time"
)

// TestMessageStatus sets recipient statuses with SQL, as the delivery
// worker will, and reads the message status back.
func TestMessageStatus(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	tests := []struct {
		name       string
		recipients []string
		want       string
	}{
		{"all queued", []string{"queued", "queued"}, StatusPending},
		{"one deferred", []string{"delivered", "deferred"}, StatusPending},
		{"one still queued", []string{"bounced", "queued", "delivered"}, StatusPending},
		{"all delivered", []string{"delivered", "delivered"}, StatusDelivered},
		{"single delivered", []string{"delivered"}, StatusDelivered},
		{"all bounced", []string{"bounced", "bounced"}, StatusBounced},
		{"bounced and suppressed", []string{"bounced", "suppressed"}, StatusBounced},
		{"all suppressed", []string{"suppressed"}, StatusBounced},
		{"some delivered", []string{"delivered", "bounced"}, StatusPartiallyDelivered},
		{"delivered and suppressed", []string{"suppressed", "delivered"}, StatusPartiallyDelivered},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := testMessage(k, len(tt.recipients))
			if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
				t.Fatal(err)
			}
			for i, st := range tt.recipients {
				_, err := s.pool.Exec(t.Context(), `UPDATE recipients SET status = $3, attempts = 1,
	last_attempt_at = now(), smtp_code = 250, updated_at = now() WHERE message_id = $1 AND idx = $2`, m.ID, i, st)
				if err != nil {
					t.Fatal(err)
				}
			}
			v, err := s.GetMessage(t.Context(), k.TenantID, m.ID)
			if err != nil {
				t.Fatal(err)
			}
			if v.Status != tt.want {
				t.Errorf("status %q, want %q", v.Status, tt.want)
			}
			for i, r := range v.Recipients {
				if r.Status != tt.recipients[i] || r.Attempts != 1 || r.LastAttemptAt == nil || r.SMTPCode == nil || *r.SMTPCode != 250 {
					t.Errorf("recipient %d = %+v, want status %s after one attempt", i, r, tt.recipients[i])
				}
			}
		})
	}
}

// TestGetMessageRecipientSummary checks that the summary columns the
// worker keeps on recipients all reach the view.
func TestGetMessageRecipientSummary(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 1)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	last := time.Now().Truncate(time.Microsecond)
	next := last.Add(5 * time.Minute)
	_, err := s.pool.Exec(t.Context(), `UPDATE recipients SET status = 'deferred', attempts = 2, last_attempt_at = $2,
	next_attempt_at = $3, smtp_code = 451, enhanced_code = '4.7.1', response = 'try later', mx_host = 'mx.dest0.example',
	tls_version = 'TLS1.3' WHERE message_id = $1`, m.ID, last, next)
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.GetMessage(t.Context(), k.TenantID, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	r := v.Recipients[0]
	if r.Status != "deferred" || r.Attempts != 2 || !r.LastAttemptAt.Equal(last) || !r.NextAttemptAt.Equal(next) ||
		*r.SMTPCode != 451 || *r.EnhancedCode != "4.7.1" || *r.Response != "try later" ||
		*r.MXHost != "mx.dest0.example" || *r.TLSVersion != "TLS1.3" {
		t.Errorf("recipient = %+v", r)
	}
}
