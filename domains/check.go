package domains

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/miekg/dns"
	"golang.org/x/net/publicsuffix"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/returnpath"
)

// Record purposes and statuses (openapi.yaml, DomainRecord).
const (
	PurposeDKIM       = "dkim"
	PurposeSPF        = "spf"
	PurposeReturnPath = "return_path"
	PurposeDMARC      = "dmarc"
	PurposeMX         = "mx"
	PurposeMTASTS     = "mta_sts"
	PurposeTLSRPT     = "tls_rpt"

	StatusVerified = "verified"
	StatusMissing  = "missing"
	StatusWrong    = "wrong"
	StatusInfo     = "info"
)

// DKIM modes.
const (
	ModeDelegated = "delegated"
	ModeDirect    = "direct"
)

// Record is one DNS record to publish and what a check found there.
type Record struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Value   string   `json:"value"`
	Purpose string   `json:"purpose"`
	Status  string   `json:"status"`
	Found   []string `json:"found"`
	// Detail says what is wrong, or what the record is for.
	Detail string `json:"detail,omitempty"`
	// Required: the domain is verified only when this record is.
	Required bool `json:"required"`
	// Selector and KeyState, for DKIM records of a key.
	Selector string `json:"selector,omitempty"`
	KeyState string `json:"key_state,omitempty"`
}

// Key is a DKIM key as a check needs it.
type Key struct {
	Selector  string
	Algorithm dkim.Algorithm
	PublicKey []byte
	State     string // pending, active, retiring
}

// checkInput is one domain to check.
type checkInput struct {
	domain string
	mode   string
	keys   []Key
}

// checkResult is a check's records and whether a lookup failed for a
// reason that says nothing of the records (timeout, SERVFAIL).
type checkResult struct {
	records   []Record
	temporary error
	// pendingSeen: every pending key is published; the rotation can
	// switch signing to it.
	pendingSeen bool
}

// delegatedSlots are the two selector pairs of delegated DKIM: the tenant
// publishes CNAMEs for both once, and rotations alternate between them,
// so a rotation needs no change by the tenant.
var delegatedSlots = [2]string{"mf1", "mf2"}

func slotSelector(slot string, alg dkim.Algorithm) string {
	if alg == dkim.AlgorithmEd25519 {
		return slot + "-ed25519"
	}
	return slot + "-rsa"
}

// DelegatedTarget is where the CNAME of selector at domain points in the
// operator's zone (MAILFERRY_DKIM_ZONE), where the key is published.
func DelegatedTarget(selector, domain, zone string) string {
	return selector + "." + domain + "." + strings.TrimSuffix(zone, ".")
}

type checker struct {
	r            *resolver
	zone         string
	spfInclude   string
	bounceDomain string
}

func (c *checker) check(ctx context.Context, in checkInput) checkResult {
	var res checkResult
	note := func(err error) {
		if err != nil && res.temporary == nil {
			res.temporary = err
		}
	}
	dkimRecs, seen, err := c.dkim(ctx, in)
	note(err)
	res.pendingSeen = seen
	res.records = append(res.records, dkimRecs...)
	spf, err := c.spf(ctx, in.domain)
	note(err)
	rp := c.returnPath(ctx, in.domain, note)
	res.records = append(res.records, spf, rp)
	dkimOK := true
	for _, r := range dkimRecs {
		if r.Required && r.Status != StatusVerified {
			dkimOK = false
		}
	}
	// A verified custom return path is what the relay writes (relay
	// mailFrom), so DMARC's SPF alignment is judged on it.
	dmarc, err := c.dmarc(ctx, in.domain, dkimOK, rp.Status == StatusVerified && rp.Type == "CNAME")
	note(err)
	res.records = append(res.records, dmarc)
	res.records = append(res.records, c.info(ctx, in.domain, note)...)
	for i := range res.records {
		if res.records[i].Found == nil {
			res.records[i].Found = []string{}
		}
	}
	return res
}

// keyTag returns the p= tag of a DKIM key record, without folding
// whitespace (RFC 6376 3.6.1, 3.2).
func keyTag(txt string) string {
	for _, tag := range strings.Split(txt, ";") {
		n, v, ok := strings.Cut(tag, "=")
		if ok && strings.TrimSpace(n) == "p" {
			return strings.Join(strings.Fields(v), "")
		}
	}
	return ""
}

func (c *checker) dkim(ctx context.Context, in checkInput) ([]Record, bool, error) {
	var (
		out       []Record
		firstErr  error
		pendingOK = true
	)
	byKey := map[string]Key{}
	for _, k := range in.keys {
		byKey[k.Selector] = k
	}
	keyRecord := func(k Key) Record {
		dk := dkim.Key{Domain: in.domain, Selector: k.Selector, Algorithm: k.Algorithm, PublicKey: k.PublicKey}
		return Record{Type: "TXT", Name: dk.DNSName(), Value: dk.DNSValue(), Purpose: PurposeDKIM,
			Selector: k.Selector, KeyState: k.State, Required: k.State == "active"}
	}
	// served checks the key's TXT record as verifiers fetch it: through
	// any CNAME (RFC 6376 3.6.2.2).
	served := func(rec *Record, k Key) (bool, error) {
		txts, err := c.r.txt(ctx, rec.Name)
		if err != nil {
			return false, err
		}
		want := base64.StdEncoding.EncodeToString(k.PublicKey)
		for _, t := range txts {
			if keyTag(t) == want {
				return true, nil
			}
		}
		return false, nil
	}
	if in.mode == ModeDirect {
		for _, k := range in.keys {
			rec := keyRecord(k)
			txts, err := c.r.txt(ctx, rec.Name)
			rec.Found = txts
			ok := false
			if err == nil {
				ok, err = served(&rec, k)
			}
			switch {
			case err != nil:
				rec.Status, rec.Detail = StatusMissing, "lookup failed: "+err.Error()
				firstErr = cmpErr(firstErr, err)
			case ok:
				rec.Status = StatusVerified
			case len(txts) == 0:
				rec.Status, rec.Detail = StatusMissing, "no TXT record at "+rec.Name
			default:
				rec.Status, rec.Detail = StatusWrong, "the TXT record at "+rec.Name+" does not hold this key (p= differs)"
			}
			rec.Detail = keyStateNote(k, rec.Detail)
			if k.State == "pending" && rec.Status != StatusVerified {
				pendingOK = false
			}
			out = append(out, rec)
		}
		return out, pendingOK && firstErr == nil, firstErr
	}
	for _, slot := range delegatedSlots {
		for _, alg := range []dkim.Algorithm{dkim.AlgorithmRSA2048, dkim.AlgorithmEd25519} {
			sel := slotSelector(slot, alg)
			name := sel + "._domainkey." + in.domain
			want := DelegatedTarget(sel, in.domain, c.zone)
			rec := Record{Type: "CNAME", Name: name, Value: want, Purpose: PurposeDKIM, Selector: sel, Required: true}
			k, hasKey := byKey[sel]
			if hasKey {
				rec.KeyState = k.State
			}
			got, err := c.r.cname(ctx, name)
			if got != "" {
				rec.Found = []string{got}
			}
			switch {
			case err != nil:
				rec.Status, rec.Detail = StatusMissing, "lookup failed: "+err.Error()
				firstErr = cmpErr(firstErr, err)
			case got == "":
				rec.Status, rec.Detail = StatusMissing, "no CNAME at "+name
			case got != want:
				rec.Status, rec.Detail = StatusWrong, "the CNAME points to "+got+", not "+want
			case !hasKey:
				rec.Status, rec.Detail = StatusVerified, "kept for the next rotation"
			default:
				ok, err := served(&rec, k)
				switch {
				case err != nil:
					rec.Status, rec.Detail = StatusMissing, "lookup failed: "+err.Error()
					firstErr = cmpErr(firstErr, err)
				case ok:
					rec.Status = StatusVerified
				default:
					// The tenant's part is right; the key is not in the
					// operator's zone yet (`mailferry dkim zone`).
					rec.Status = StatusMissing
					rec.Detail = "the CNAME is right, but " + want + " does not serve the key yet; the operator publishes it"
				}
			}
			if hasKey {
				rec.Detail = keyStateNote(k, rec.Detail)
				// A rotation's new key and a retiring one do not decide
				// the domain's status; the key that signs does.
				rec.Required = k.State == "active"
			}
			if hasKey && k.State == "pending" && rec.Status != StatusVerified {
				pendingOK = false
			}
			out = append(out, rec)
		}
	}
	return out, pendingOK && firstErr == nil, firstErr
}

func keyStateNote(k Key, detail string) string {
	var note string
	switch k.State {
	case "pending":
		note = "new key of a rotation: signing switches to it once it is published"
	case "retiring":
		note = "old key: keep it published until it is retired, so mail signed with it still verifies"
	}
	if note == "" {
		return detail
	}
	if detail == "" {
		return note
	}
	return detail + "; " + note
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func (c *checker) spf(ctx context.Context, domain string) (Record, error) {
	rec := Record{Type: "TXT", Name: domain, Purpose: PurposeSPF}
	txts, err := c.r.txt(ctx, domain)
	if err != nil {
		rec.Status, rec.Detail = StatusMissing, "lookup failed: "+err.Error()
		return rec, err
	}
	var spfs []string
	for _, t := range txts {
		if isSPF(t) {
			spfs = append(spfs, t)
		}
	}
	rec.Found = spfs
	if c.spfInclude == "" {
		rec.Status = StatusInfo
		rec.Detail = "MAILFERRY_SPF_INCLUDE is not set: the operator names no SPF include for its sending addresses"
		if len(spfs) > 0 {
			rec.Value = spfs[0]
		}
		return rec, nil
	}
	current := ""
	if len(spfs) > 0 {
		current = spfs[0]
	}
	rec.Value = mergeSPF(current, c.spfInclude)
	var problems []string
	switch {
	case len(spfs) == 0:
		rec.Status = StatusMissing
		problems = append(problems, "no SPF record at "+domain)
	case len(spfs) > 1:
		rec.Status = StatusWrong
		// RFC 7208 4.5: more than one record is a permerror.
		problems = append(problems, fmt.Sprintf("%d SPF records: RFC 7208 4.5 makes that a permerror; merge them into the one shown", len(spfs)))
	case !hasInclude(current, c.spfInclude):
		rec.Status = StatusWrong
		problems = append(problems, "the SPF record lacks include:"+c.spfInclude+"; add it to the existing record (never a second one)")
	default:
		rec.Status = StatusVerified
	}
	n, err := spfLookups(ctx, c.r, rec.Value, 0)
	if err != nil {
		return rec, err
	}
	if n > maxSPFLookups {
		rec.Status = StatusWrong
		problems = append(problems, fmt.Sprintf("SPF has %d DNS lookups, over RFC 7208's 10 (4.6.4): receivers answer permerror", n))
	}
	rec.Detail = strings.Join(problems, "; ")
	return rec, nil
}

// orgDomain is the organizational domain (RFC 7489 3.2): the public
// suffix and one label more, from the public suffix list golang.org/x/net
// carries (so example.co.uk, not co.uk). A name that is itself a public
// suffix, or that the list cannot judge, is its own.
func orgDomain(d string) string {
	d = strings.ToLower(strings.TrimSuffix(d, "."))
	org, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return d
	}
	return org
}

func (c *checker) returnPath(ctx context.Context, domain string, note func(error)) Record {
	if c.bounceDomain == "" {
		return Record{Type: "", Name: domain, Purpose: PurposeReturnPath, Status: StatusInfo,
			Detail: "the return path is the From address, so SPF checks " + domain + " and aligns with it"}
	}
	name := returnpath.CustomDomain(domain) // the relay writes return paths there once verified
	rec := Record{Type: "CNAME", Name: name, Value: c.bounceDomain, Purpose: PurposeReturnPath}
	got, err := c.r.cname(ctx, name)
	note(err)
	if got != "" {
		rec.Found = []string{got}
	}
	switch {
	case err != nil:
		rec.Status, rec.Detail = StatusMissing, "lookup failed: "+err.Error()
	case got == "":
		rec.Status = StatusMissing
		rec.Detail = "optional: with a CNAME to the bounce domain, return paths move to " + name + " and SPF aligns with " + domain + "; until then they are at " + c.bounceDomain + " and DMARC aligns through DKIM"
	case got != c.bounceDomain:
		rec.Status, rec.Detail = StatusWrong, "the CNAME points to "+got+", not "+c.bounceDomain
	default:
		rec.Status = StatusVerified
		rec.Detail = "return paths are at " + name + ": SPF checks it (through the CNAME, the bounce domain's SPF record) and aligns with " + domain
	}
	return rec
}

// dmarcTags parses a DMARC record's tags (RFC 7489 6.4).
func dmarcTags(txt string) map[string]string {
	m := map[string]string{}
	for _, tag := range strings.Split(txt, ";") {
		n, v, ok := strings.Cut(tag, "=")
		if ok {
			m[strings.ToLower(strings.TrimSpace(n))] = strings.TrimSpace(v)
		}
	}
	return m
}

// isDMARC: a record whose first tag is not v=DMARC1 is not DMARC's
// (RFC 7489 6.6.3).
func isDMARC(txt string) bool {
	first, _, _ := strings.Cut(txt, ";")
	n, v, ok := strings.Cut(first, "=")
	return ok && strings.TrimSpace(n) == "v" && strings.TrimSpace(v) == "DMARC1"
}

// dmarc checks domain's DMARC record; customRP: the return paths are at
// the verified custom return path domain.
func (c *checker) dmarc(ctx context.Context, domain string, dkimOK, customRP bool) (Record, error) {
	name := "_dmarc." + domain
	rec := Record{Type: "TXT", Name: name, Purpose: PurposeDMARC, Value: "v=DMARC1; p=none; adkim=r; aspf=r"}
	txts, err := c.r.txt(ctx, name)
	if err != nil {
		rec.Status, rec.Detail = StatusMissing, "lookup failed: "+err.Error()
		return rec, err
	}
	found := dmarcRecords(txts)
	var inherited string
	if org := orgDomain(domain); len(found) == 0 && org != domain {
		// RFC 7489 6.6.3: without a record of its own, the organizational
		// domain's applies (its sp= for subdomains).
		txts, err := c.r.txt(ctx, "_dmarc."+org)
		if err != nil {
			rec.Status, rec.Detail = StatusMissing, "lookup failed: "+err.Error()
			return rec, err
		}
		if found = dmarcRecords(txts); len(found) > 0 {
			inherited = "_dmarc." + org
		}
	}
	rec.Found = found
	switch len(found) {
	case 0:
		rec.Status = StatusMissing
		rec.Detail = "no DMARC record: suggested p=none to start; raise it to quarantine once reports show mail aligns"
		return rec, nil
	case 1:
	default:
		// RFC 7489 6.6.3: more than one record means no DMARC policy.
		rec.Status, rec.Detail = StatusWrong, "more than one DMARC record: receivers apply none (RFC 7489 6.6.3)"
		return rec, nil
	}
	rec.Value = found[0]
	tags := dmarcTags(found[0])
	if inherited != "" && tags["sp"] != "" {
		tags["p"] = tags["sp"] // RFC 7489 6.3: sp= is the policy for subdomains
	}
	// SPF aligns when the return path's domain matches the From domain:
	// exactly with aspf=s, by organizational domain with aspf=r
	// (RFC 7489 3.1.2).
	rp := domain
	switch {
	case customRP:
		rp = returnpath.CustomDomain(domain)
	case c.bounceDomain != "":
		rp = c.bounceDomain
	}
	spfAligned := rp == domain || !strings.EqualFold(tags["aspf"], "s") && orgDomain(rp) == orgDomain(domain)
	// DKIM signs with d= the From domain itself: aligned in both modes.
	var notes []string
	switch {
	case dkimOK && spfAligned:
		rec.Status = StatusVerified
		notes = append(notes, "mail aligns through DKIM (d="+domain+") and SPF")
	case dkimOK:
		rec.Status = StatusVerified
		notes = append(notes, "mail aligns through DKIM (d="+domain+"); SPF does not align: the return path is at "+rp)
	case spfAligned:
		rec.Status = StatusVerified
		notes = append(notes, "mail aligns through SPF only until the DKIM records are verified")
	default:
		rec.Status = StatusWrong
		notes = append(notes, "mail will not align: the DKIM records are not verified and the return path is at "+rp)
	}
	if p := strings.ToLower(tags["p"]); p != "none" && p != "quarantine" && p != "reject" {
		rec.Status = StatusWrong
		notes = append(notes, "p= is missing or not none, quarantine or reject (RFC 7489 6.3)")
	}
	if inherited != "" {
		notes = append(notes, "the record of "+inherited+" applies (RFC 7489 6.6.3)")
	}
	rec.Detail = strings.Join(notes, "; ")
	return rec, nil
}

func dmarcRecords(txts []string) []string {
	var out []string
	for _, t := range txts {
		if isDMARC(t) {
			out = append(out, t)
		}
	}
	return out
}

// info returns the records that only inform: MX, MTA-STS, TLS-RPT.
func (c *checker) info(ctx context.Context, domain string, note func(error)) []Record {
	mx := Record{Type: "MX", Name: domain, Purpose: PurposeMX, Status: StatusInfo,
		Detail: "where replies to this domain go; Mailferry does not need it"}
	rrs, err := c.r.lookup(ctx, domain, dns.TypeMX)
	note(err)
	for _, rr := range rrs {
		if m, ok := rr.(*dns.MX); ok {
			mx.Found = append(mx.Found, fmt.Sprintf("%d %s", m.Preference, strings.TrimSuffix(m.Mx, ".")))
		}
	}
	if len(mx.Found) == 0 && err == nil {
		mx.Detail = "no MX record: replies and bounces to addresses at this domain cannot be delivered"
	}
	out := []Record{mx}
	for _, o := range []struct{ name, purpose, prefix, detail string }{
		{"_mta-sts." + domain, PurposeMTASTS, "v=STSv1", "optional: MTA-STS (RFC 8461) asks senders for verified TLS to this domain's MX hosts"},
		{"_smtp._tls." + domain, PurposeTLSRPT, "v=TLSRPTv1", "optional: TLS-RPT (RFC 8460) asks senders for daily TLS reports"},
	} {
		rec := Record{Type: "TXT", Name: o.name, Purpose: o.purpose, Status: StatusInfo, Detail: o.detail}
		txts, err := c.r.txt(ctx, o.name)
		note(err)
		for _, t := range txts {
			if strings.HasPrefix(t, o.prefix) {
				rec.Found = append(rec.Found, t)
			}
		}
		out = append(out, rec)
	}
	return out
}
