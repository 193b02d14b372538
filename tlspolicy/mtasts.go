package tlspolicy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Policy modes (RFC 8461 5).
const (
	ModeEnforce = "enforce"
	ModeTesting = "testing"
	ModeNone    = "none"
)

// maxMaxAge is RFC 8461 3.2's ceiling on max_age: 31557600 seconds, a year.
const maxMaxAge = 31557600

// Policy is an MTA-STS policy (RFC 8461 3.2).
type Policy struct {
	Mode   string
	MX     []string // patterns: "mail.example.com" or "*.example.com", lower case
	MaxAge time.Duration
}

// Record is the _mta-sts TXT record (RFC 8461 3.1); only its id matters.
type Record struct {
	ID string
}

var errNoRecord = errors.New("no MTA-STS record")

// ParseRecords picks the MTA-STS record out of a name's TXT strings (each
// record's strings already joined). RFC 8461 3.1: records not starting
// with "v=STSv1;" are discarded; unless exactly one is left, or it does not
// parse, the domain has no policy.
func ParseRecords(txts []string) (Record, error) {
	var found []string
	for _, t := range txts {
		if strings.HasPrefix(t, "v=STSv1;") || t == "v=STSv1" {
			found = append(found, t)
		}
	}
	switch len(found) {
	case 0:
		return Record{}, errNoRecord
	case 1:
		return ParseRecord(found[0])
	default:
		return Record{}, fmt.Errorf("%d MTA-STS records, want one (RFC 8461 3.1)", len(found))
	}
}

// ParseRecord parses one record (RFC 8461 3.1):
//
//	sts-text-record = sts-version 1*(*WSP field-delim *WSP sts-field) [field-delim]
//	sts-id = "id" *WSP "=" *WSP 1*32(ALPHA / DIGIT)
func ParseRecord(s string) (Record, error) {
	fields := strings.Split(s, ";")
	if fields[0] != "v=STSv1" {
		return Record{}, errors.New(`MTA-STS record does not start with "v=STSv1;"`)
	}
	var r Record
	for i, f := range fields[1:] {
		f = strings.Trim(f, " \t")
		if f == "" {
			if i == len(fields)-2 {
				break // a trailing field-delim
			}
			return Record{}, errors.New("MTA-STS record: empty field")
		}
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Record{}, fmt.Errorf("MTA-STS record: field %q has no '='", f)
		}
		k, v = strings.TrimRight(k, " \t"), strings.TrimLeft(v, " \t")
		switch {
		case k == "id":
			if r.ID != "" {
				return Record{}, errors.New("MTA-STS record: id repeated")
			}
			if len(v) < 1 || len(v) > 32 || !alnum(v) {
				return Record{}, fmt.Errorf("MTA-STS record: id %q is not 1 to 32 letters and digits", v)
			}
			r.ID = v
		case validExtName(k) && validExtValue(v):
			// sts-extension: ignored.
		default:
			return Record{}, fmt.Errorf("MTA-STS record: bad field %q", f)
		}
	}
	if r.ID == "" {
		return Record{}, errors.New("MTA-STS record: no id")
	}
	return r, nil
}

func alnum(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// validExtName: (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".").
func validExtName(s string) bool {
	if s == "" || len(s) > 32 || !alnum(s[:1]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !alnum(s[i:i+1]) && c != '_' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// validExtValue: 1*(%x21-3A / %x3C / %x3E-7E).
func validExtValue(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == ';' || c == '=' {
			return false
		}
	}
	return true
}

// ParsePolicy parses a policy body (RFC 8461 3.2): "key: value" lines ended
// by LF or CRLF. version, mode and max_age are required, mx too unless the
// mode is none; unknown keys are ignored; of a repeated key other than mx
// the first counts.
func ParsePolicy(body string) (Policy, error) {
	var p Policy
	seen := map[string]bool{}
	body = strings.TrimSuffix(body, "\n")
	for n, line := range strings.Split(body, "\n") {
		line = strings.TrimSuffix(line, "\r")
		if line == "" && n == 0 {
			return Policy{}, errors.New("MTA-STS policy: empty")
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return Policy{}, fmt.Errorf("MTA-STS policy line %d: no ':'", n+1)
		}
		k, v = strings.Trim(k, " \t"), strings.Trim(v, " \t")
		if !validExtName(k) {
			return Policy{}, fmt.Errorf("MTA-STS policy line %d: bad key %q", n+1, k)
		}
		if k != "mx" && seen[k] {
			continue
		}
		seen[k] = true
		switch k {
		case "version":
			if v != "STSv1" {
				return Policy{}, fmt.Errorf("MTA-STS policy: version %q, want STSv1", v)
			}
		case "mode":
			switch v {
			case ModeEnforce, ModeTesting, ModeNone:
				p.Mode = v
			default:
				return Policy{}, fmt.Errorf("MTA-STS policy: mode %q", v)
			}
		case "max_age":
			// 1*10DIGIT, at most 31557600.
			if v == "" || len(v) > 10 || strings.Trim(v, "0123456789") != "" {
				return Policy{}, fmt.Errorf("MTA-STS policy: max_age %q", v)
			}
			n, _ := strconv.ParseInt(v, 10, 64)
			if n > maxMaxAge {
				return Policy{}, fmt.Errorf("MTA-STS policy: max_age %d over %d", n, maxMaxAge)
			}
			p.MaxAge = time.Duration(n) * time.Second
		case "mx":
			pat, err := mxPattern(v)
			if err != nil {
				return Policy{}, err
			}
			p.MX = append(p.MX, pat)
		}
	}
	switch {
	case !seen["version"]:
		return Policy{}, errors.New("MTA-STS policy: no version")
	case p.Mode == "":
		return Policy{}, errors.New("MTA-STS policy: no mode")
	case !seen["max_age"]:
		return Policy{}, errors.New("MTA-STS policy: no max_age")
	case len(p.MX) == 0 && p.Mode != ModeNone:
		return Policy{}, errors.New("MTA-STS policy: no mx")
	}
	return p, nil
}

// mxPattern checks one mx value: a domain name, or "*." and one.
func mxPattern(v string) (string, error) {
	v = strings.ToLower(strings.TrimSuffix(v, "."))
	name := strings.TrimPrefix(v, "*.")
	if name == "" || len(name) > 253 {
		return "", fmt.Errorf("MTA-STS policy: mx %q", v)
	}
	for _, l := range strings.Split(name, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", fmt.Errorf("MTA-STS policy: mx %q", v)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("MTA-STS policy: mx %q", v)
			}
		}
	}
	return v, nil
}

// Matches reports whether MX host name matches one of the policy's
// patterns (RFC 8461 4.1): case-insensitive, and a "*." wildcard stands for
// exactly one leftmost label — "*.example.com" matches "mx.example.com",
// not "example.com" nor "a.b.example.com".
func (p Policy) Matches(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range p.MX {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			label, parent, found := strings.Cut(host, ".")
			if found && label != "" && parent == rest {
				return true
			}
			continue
		}
		if host == pat {
			return true
		}
	}
	return false
}
