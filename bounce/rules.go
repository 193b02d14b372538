package bounce

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

//go:embed rules.txt
var embeddedRules string

// maxText bounds the reply text the regexps see, and so the time (about
// 5 ms for a text no rule matches): RFC 5321 4.5.3.1.5 allows 512 octets a
// line, and the first few lines say all there is to say.
const maxText = 2048

// Rules classifies failures. Immutable once built; safe for concurrent use.
//
// The rule file format, shared by the embedded rules.txt and an operator's
// MAILFERRY_BOUNCE_RULES file: one rule a line; blank lines and lines whose
// first non-blank character is '#' are skipped, and a token starting with
// '#' ends the line:
//
//		[reply PATTERN] [status PATTERN] [text /REGEXP/FLAGS] CLASS [hard|soft] [suppress]
//
//	  - reply 550, reply 5xx, reply 45x: the three-digit reply code, 'x' any
//	    digit. Code 0 (no reply) matches no pattern.
//	  - status 5.1.1, status x.7.x, status 5.7.606: the RFC 3463 enhanced
//	    status code, 'x' any number in that field.
//	  - text /…/i: an RE2 regexp (Go's regexp syntax), searched for in the
//	    reply text with the reply codes and enhanced codes at the start of
//	    each line taken out and white space runs made one space; a '/' in it
//	    is written '\/'. The only flag is i (case-insensitive).
//	  - CLASS: one of the classes of this package (invalid_recipient, …).
//	  - hard or soft: the type, when the class alone does not say it (see
//	    Classify). A transient reply (4xx) is soft whatever the rule says.
//	  - suppress: a permanent failure of this kind puts the address on the
//	    suppression list.
//
// A rule needs at least one of reply, status and text, and matches when all
// it has match. Rules are tried in order, the operator's before the
// embedded ones, and the first match decides.
type Rules struct {
	list []rule
}

type rule struct {
	where    string // file:line, for tests and messages
	reply    string // "" or 3 characters of digits and 'x'
	status   [3]int // -1: any; status[0] == 0: no status condition
	text     *regexp.Regexp
	class    Class
	typ      Type // "" when the rule does not say
	suppress bool
}

// defaultRules compiles the embedded rule file once per process; it is
// immutable afterwards.
var defaultRules = sync.OnceValue(func() *Rules {
	r, err := parseRules("rules.txt", embeddedRules)
	if err != nil {
		panic("bounce: embedded rules: " + err.Error()) // a build error; tests catch it
	}
	return r
})

// DefaultRules returns the embedded rules.
func DefaultRules() *Rules { return defaultRules() }

// LoadRules reads the operator's rule file at path (MAILFERRY_BOUNCE_RULES)
// and returns its rules followed by the embedded ones. An error names the
// file and line and what is wrong there.
func LoadRules(ctx context.Context, path string) (*Rules, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load bounce rules: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load bounce rules: %w", err)
	}
	r, err := parseRules(path, string(b))
	if err != nil {
		return nil, fmt.Errorf("load bounce rules: %w", err)
	}
	def := DefaultRules()
	list := make([]rule, 0, len(r.list)+len(def.list))
	list = append(append(list, r.list...), def.list...)
	return &Rules{list: list}, nil
}

// Len returns the number of rules, the operator's and the embedded.
func (r *Rules) Len() int { return len(r.list) }

func parseRules(name, text string) (*Rules, error) {
	var (
		list []rule
		errs []error
	)
	for n, line := range strings.Split(text, "\n") {
		where := name + ":" + strconv.Itoa(n+1)
		rl, ok, err := parseRule(strings.TrimRight(line, "\r"))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		if ok {
			rl.where = where
			list = append(list, rl)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Rules{list: list}, nil
}

// parseRule reads one line; ok is false for a blank or comment line.
func parseRule(line string) (r rule, ok bool, err error) {
	s := strings.TrimSpace(line)
	if s == "" || s[0] == '#' {
		return rule{}, false, nil
	}
	var conds int
	for s != "" {
		var tok string
		tok, s = nextToken(s)
		if tok[0] == '#' {
			break
		}
		switch tok {
		case "reply", "status", "text":
			if r.class != "" {
				return rule{}, false, fmt.Errorf("%q after the class: conditions come first", tok)
			}
			conds++
		}
		switch {
		case tok == "reply":
			if r.reply != "" {
				return rule{}, false, errors.New(`two "reply" conditions`)
			}
			tok, s = nextToken(s)
			if !isReplyPattern(tok) {
				return rule{}, false, fmt.Errorf("reply pattern %q: want three characters, digits or x, the first 2, 4 or 5 (550, 5xx)", tok)
			}
			r.reply = tok
		case tok == "status":
			if r.status[0] != 0 {
				return rule{}, false, errors.New(`two "status" conditions`)
			}
			tok, s = nextToken(s)
			st, ok := parseStatusPattern(tok)
			if !ok {
				return rule{}, false, fmt.Errorf("status pattern %q: want class.subject.detail, numbers or x, the class 2, 4, 5 or x (5.1.1, x.7.x; RFC 3463 2)", tok)
			}
			r.status = st
		case tok == "text":
			if r.text != nil {
				return rule{}, false, errors.New(`two "text" conditions`)
			}
			re, rest, err := parseRegexp(s)
			if err != nil {
				return rule{}, false, err
			}
			r.text, s = re, rest
		case r.class == "":
			if conds == 0 {
				return rule{}, false, fmt.Errorf("%q: a rule starts with a condition: reply, status or text", tok)
			}
			if !Class(tok).Valid() {
				return rule{}, false, fmt.Errorf("unknown class %q", tok)
			}
			r.class = Class(tok)
		case tok == "hard" || tok == "soft":
			if r.typ != "" || r.suppress {
				return rule{}, false, fmt.Errorf("%q out of place: the type comes once, right after the class", tok)
			}
			r.typ = Type(tok)
		case tok == "suppress":
			if r.suppress {
				return rule{}, false, errors.New(`"suppress" twice`)
			}
			r.suppress = true
		default:
			return rule{}, false, fmt.Errorf("unexpected %q after the class: want hard, soft or suppress", tok)
		}
	}
	if r.class == "" {
		if conds == 0 {
			return rule{}, false, nil // only a comment after blanks
		}
		return rule{}, false, errors.New("no class")
	}
	return r, true, nil
}

func nextToken(s string) (tok, rest string) {
	s = strings.TrimLeft(s, " \t")
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimLeft(s[i:], " \t")
}

// parseRegexp reads /…/flags from the start of s.
func parseRegexp(s string) (*regexp.Regexp, string, error) {
	s = strings.TrimLeft(s, " \t")
	if s == "" || s[0] != '/' {
		return nil, "", errors.New(`"text" wants /regexp/`)
	}
	end := -1
	for i := 1; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			continue
		}
		if s[i] == '/' {
			end = i
			break
		}
	}
	if end < 0 {
		return nil, "", errors.New("regexp without its closing '/' (write a '/' inside as '\\/')")
	}
	expr := s[1:end]
	if expr == "" {
		return nil, "", errors.New("empty regexp")
	}
	after := s[end+1:]
	i := strings.IndexAny(after, " \t")
	if i < 0 {
		i = len(after)
	}
	flags, rest := after[:i], after[i:]
	switch flags {
	case "":
	case "i":
		expr = "(?i)" + expr
	default:
		return nil, "", fmt.Errorf("regexp flags %q: only i is known", flags)
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, "", fmt.Errorf("regexp: %w", err)
	}
	return re, rest, nil
}

func isReplyPattern(s string) bool {
	if len(s) != 3 || !strings.ContainsRune("245x", rune(s[0])) {
		return false
	}
	for i := 1; i < 3; i++ {
		if c := s[i]; c != 'x' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func parseStatusPattern(s string) ([3]int, bool) {
	var st [3]int
	f := strings.Split(s, ".")
	if len(f) != 3 {
		return st, false
	}
	for i, p := range f {
		if p == "x" {
			st[i] = -1
			continue
		}
		n, ok := statusNumber(p)
		if !ok {
			return st, false
		}
		st[i] = n
	}
	if st[0] != -1 && st[0] != 2 && st[0] != 4 && st[0] != 5 {
		return st, false
	}
	return st, true
}

// statusNumber reads 1 to 3 digits (RFC 3463 2: subject and detail are
// 1*3digit).
func statusNumber(p string) (int, bool) {
	if p == "" || len(p) > 3 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return 0, false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n, true
}

func (r *rule) match(in *input) bool {
	if r.reply != "" {
		if in.code == 0 {
			return false
		}
		c := strconv.Itoa(in.code)
		for i := range 3 {
			if r.reply[i] != 'x' && r.reply[i] != c[i] {
				return false
			}
		}
	}
	if r.status[0] != 0 {
		if !in.hasStatus {
			return false
		}
		for i, want := range r.status {
			if want != -1 && want != in.status[i] {
				return false
			}
		}
	}
	return r.text == nil || r.text.MatchString(in.text)
}
