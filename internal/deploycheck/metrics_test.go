package deploycheck

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// metricDef is a Prometheus metric the Go source defines.
type metricDef struct {
	name   string
	kind   string   // counter, gauge, histogram, summary, untyped, or desc (prometheus.NewDesc: type unknown)
	labels []string // variable and constant label names
	// labelsKnown is false when the labels are not literals in the
	// definition; label checks are skipped then.
	labelsKnown bool
	pos         string
}

// metricSet is every mailferry_ metric defined, by name.
type metricSet map[string]metricDef

// optsKinds maps client_golang's options types to metric kinds.
var optsKinds = map[string]string{
	"CounterOpts":   "counter",
	"GaugeOpts":     "gauge",
	"HistogramOpts": "histogram",
	"SummaryOpts":   "summary",
	"Opts":          "untyped",
}

// scanMetrics parses every non-test .go file of the module and collects the
// mailferry_ metrics defined through client_golang: the Name (with
// Namespace and Subsystem) of a CounterOpts, GaugeOpts, HistogramOpts,
// SummaryOpts or Opts literal, and the first argument of prometheus.NewDesc,
// each with its label names where they are literal.
func scanMetrics(root string) (metricSet, error) {
	set := metricSet{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", ".run", "testdata", "vendor", "node_modules", "bin":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		scanFile(f, fset, filepath.ToSlash(rel), set)
		return nil
	})
	return set, err
}

func scanFile(f *ast.File, fset *token.FileSet, rel string, set metricSet) {
	seen := map[*ast.CompositeLit]bool{}
	add := func(def metricDef, at token.Pos) {
		if !strings.HasPrefix(def.name, "mailferry_") {
			return
		}
		p := fset.Position(at)
		def.pos = fmt.Sprintf("%s:%d", rel, p.Line)
		if old, ok := set[def.name]; ok && old.labelsKnown && !def.labelsKnown {
			return
		}
		set[def.name] = def
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			name := calleeName(n.Fun)
			switch {
			case name == "NewDesc" && len(n.Args) >= 3:
				metric, ok := stringLit(n.Args[0])
				if !ok {
					return true
				}
				labels, known := stringSlice(n.Args[2])
				if len(n.Args) >= 4 {
					cl, ok := mapKeys(n.Args[3])
					labels = append(labels, cl...)
					known = known && ok
				}
				add(metricDef{name: metric, kind: "desc", labels: labels, labelsKnown: known}, n.Pos())
			case strings.HasPrefix(name, "New") && len(n.Args) >= 1:
				lit := compositeLit(n.Args[0])
				if lit == nil {
					return true
				}
				kind, ok := optsKinds[typeName(lit.Type)]
				if !ok {
					return true
				}
				seen[lit] = true
				def, ok := optsDef(lit, kind)
				if !ok {
					return true
				}
				if strings.HasSuffix(name, "Vec") {
					if len(n.Args) < 2 {
						def.labelsKnown = false
					} else {
						labels, known := stringSlice(n.Args[1])
						def.labels = append(def.labels, labels...)
						def.labelsKnown = def.labelsKnown && known
					}
				}
				add(def, lit.Pos())
			}
		case *ast.CompositeLit:
			// Options built apart from the New call: the name is known, the
			// variable labels are not.
			if seen[n] {
				return true
			}
			kind, ok := optsKinds[typeName(n.Type)]
			if !ok {
				return true
			}
			if def, ok := optsDef(n, kind); ok {
				def.labelsKnown = false
				add(def, n.Pos())
			}
		}
		return true
	})
}

// optsDef reads Namespace, Subsystem, Name and ConstLabels from an options
// literal; ok is false when the name is not a string literal.
func optsDef(lit *ast.CompositeLit, kind string) (metricDef, bool) {
	var ns, sub, name string
	def := metricDef{kind: kind, labelsKnown: true}
	haveName := false
	for _, e := range lit.Elts {
		kv, ok := e.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		key, _ := kv.Key.(*ast.Ident)
		if key == nil {
			continue
		}
		switch key.Name {
		case "Namespace":
			ns, _ = stringLit(kv.Value)
		case "Subsystem":
			sub, _ = stringLit(kv.Value)
		case "Name":
			name, haveName = stringLit(kv.Value)
		case "ConstLabels":
			keys, ok := mapKeys(kv.Value)
			def.labels = append(def.labels, keys...)
			def.labelsKnown = def.labelsKnown && ok
		}
	}
	if !haveName {
		return def, false
	}
	var parts []string
	for _, p := range []string{ns, sub, name} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	def.name = strings.Join(parts, "_")
	return def, true
}

func calleeName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.SelectorExpr:
		return e.Sel.Name
	case *ast.Ident:
		return e.Name
	}
	return ""
}

func typeName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.SelectorExpr:
		if x, ok := e.X.(*ast.Ident); ok && x.Name == "prometheus" {
			return e.Sel.Name
		}
	}
	return ""
}

func compositeLit(e ast.Expr) *ast.CompositeLit {
	if u, ok := e.(*ast.UnaryExpr); ok && u.Op == token.AND {
		e = u.X
	}
	lit, _ := e.(*ast.CompositeLit)
	return lit
}

func stringLit(e ast.Expr) (string, bool) {
	b, ok := e.(*ast.BasicLit)
	if !ok || b.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(b.Value)
	return s, err == nil
}

// stringSlice reads []string{"a", "b"}; nil is an empty list.
func stringSlice(e ast.Expr) ([]string, bool) {
	if id, ok := e.(*ast.Ident); ok && id.Name == "nil" {
		return nil, true
	}
	lit, ok := e.(*ast.CompositeLit)
	if !ok {
		return nil, false
	}
	var out []string
	for _, el := range lit.Elts {
		s, ok := stringLit(el)
		if !ok {
			return out, false
		}
		out = append(out, s)
	}
	return out, true
}

// mapKeys reads the keys of prometheus.Labels{"k": "v"}; nil has none.
func mapKeys(e ast.Expr) ([]string, bool) {
	if id, ok := e.(*ast.Ident); ok && id.Name == "nil" {
		return nil, true
	}
	lit, ok := e.(*ast.CompositeLit)
	if !ok {
		return nil, false
	}
	var out []string
	for _, el := range lit.Elts {
		kv, ok := el.(*ast.KeyValueExpr)
		if !ok {
			return out, false
		}
		s, ok := stringLit(kv.Key)
		if !ok {
			return out, false
		}
		out = append(out, s)
	}
	return out, true
}

// targetLabels are added by Prometheus (job, instance) and by Kubernetes
// service discovery, not by Mailferry.
var targetLabels = []string{"job", "instance", "namespace", "pod", "service", "container", "endpoint"}

// lookup resolves a name used in PromQL to its definition: the name itself,
// or a histogram's _bucket, _sum, _count series, or a summary's _sum and
// _count. suffix is the series suffix used.
func (s metricSet) lookup(name string) (def metricDef, suffix string, ok bool) {
	if d, ok := s[name]; ok {
		return d, "", true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		base, found := strings.CutSuffix(name, suf)
		if !found {
			continue
		}
		d, ok := s[base]
		if !ok {
			continue
		}
		if d.kind == "histogram" || d.kind == "summary" && suf != "_bucket" {
			return d, suf, true
		}
	}
	return metricDef{}, "", false
}

// names lists the defined names, sorted, for messages.
func (s metricSet) names() string {
	var out []string
	for n := range s {
		out = append(out, n)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// checkPromQL checks one expression: every mailferry_ metric it names is
// defined (a histogram's _bucket/_sum/_count included), every label in a
// selector of such a metric is one it has, and every label the expression
// groups or matches by is a label of one of its metrics or a target label.
// where prefixes each problem.
func checkPromQL(where, expr string, defs metricSet) []string {
	var ps problems
	sel, err := parsePromQL(expr)
	expr = strings.Join(strings.Fields(expr), " ") // one line, for messages
	if err != nil {
		ps.add("%s: %v in %q", where, err, expr)
		return ps
	}
	union := map[string]bool{}
	for _, l := range targetLabels {
		union[l] = true
	}
	checkGrouping := false
	for _, s := range sel.selectors {
		if !strings.HasPrefix(s.metric, "mailferry_") {
			continue
		}
		def, suffix, ok := defs.lookup(s.metric)
		if !ok {
			hint := ""
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if base, found := strings.CutSuffix(s.metric, suf); found {
					if d, ok := defs[base]; ok {
						hint = fmt.Sprintf(" (%s is a %s, which has no %s series)", base, d.kind, suf)
					}
				}
			}
			ps.add("%s: metric %s is not defined in the Go source%s; defined: %s", where, s.metric, hint, defs.names())
			continue
		}
		if !def.labelsKnown {
			continue
		}
		checkGrouping = true
		have := map[string]bool{}
		for _, l := range def.labels {
			have[l] = true
			union[l] = true
		}
		if suffix == "_bucket" {
			have["le"] = true
			union["le"] = true
		}
		for _, l := range s.labels {
			if !have[l] && !slices.Contains(targetLabels, l) {
				ps.add("%s: %s has no label %q (it has %s) in %q", where, def.name, l, labelList(def, suffix), expr)
			}
		}
	}
	if checkGrouping {
		for _, l := range sel.grouping {
			if !union[l] {
				ps.add("%s: label %q in by/without/on/ignoring is on none of the expression's metrics in %q", where, l, expr)
			}
		}
	}
	return ps
}

func labelList(d metricDef, suffix string) string {
	ls := slices.Clone(d.labels)
	if suffix == "_bucket" {
		ls = append(ls, "le")
	}
	if len(ls) == 0 {
		return "none"
	}
	return strings.Join(ls, ", ")
}

// promSelector is a metric name with the label names of its matchers.
type promSelector struct {
	metric string
	labels []string
}

type promRefs struct {
	selectors []promSelector
	grouping  []string // labels in by, without, on, ignoring, group_left, group_right
}

type promTok struct {
	kind byte // 'i' identifier, 's' string, 'n' number, 'r' [range], 'v' $variable, 'o' operator or punctuation
	text string
}

// lexPromQL splits a PromQL expression, with Grafana's $variables, into
// tokens. It knows enough of the language to find metric names and labels,
// not to evaluate anything.
func lexPromQL(s string) ([]promTok, error) {
	var toks []promTok
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for j < len(s) && s[j] != c {
				if s[j] == '\\' && c != '`' {
					j++
				}
				j++
			}
			if j >= len(s) {
				return nil, fmt.Errorf("unterminated string at offset %d", i)
			}
			toks = append(toks, promTok{'s', s[i : j+1]})
			i = j + 1
		case c == '$':
			j := i + 1
			if j < len(s) && s[j] == '{' {
				end := strings.IndexByte(s[j:], '}')
				if end < 0 {
					return nil, fmt.Errorf("unclosed ${ at offset %d", i)
				}
				j += end + 1
			} else {
				for j < len(s) && isIdent(s[j]) {
					j++
				}
			}
			toks = append(toks, promTok{'v', s[i:j]})
			i = j
		case c == '[':
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return nil, fmt.Errorf("unclosed [ at offset %d", i)
			}
			toks = append(toks, promTok{'r', s[i : i+end+1]})
			i += end + 1
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			toks = append(toks, promTok{'i', s[i:j]})
			i = j
		case c >= '0' && c <= '9' || c == '.':
			j := i
			for j < len(s) && (isIdent(s[j]) || s[j] == '.') {
				j++
			}
			toks = append(toks, promTok{'n', s[i:j]})
			i = j
		default:
			if i+1 < len(s) {
				switch two := s[i : i+2]; two {
				case "=~", "!~", "!=", "==", ">=", "<=":
					toks = append(toks, promTok{'o', two})
					i += 2
					continue
				}
			}
			toks = append(toks, promTok{'o', string(c)})
			i++
		}
	}
	return toks, nil
}

var (
	promGroupingWords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
	promKeywords      = map[string]bool{
		"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
		"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
		"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
		"limitk": true, "limit_ratio": true, "inf": true, "nan": true, "Inf": true, "NaN": true,
	}
)

// parsePromQL finds the metric selectors and grouping labels of expr.
func parsePromQL(expr string) (promRefs, error) {
	toks, err := lexPromQL(expr)
	if err != nil {
		return promRefs{}, err
	}
	var refs promRefs
	next := func(i int) promTok {
		if i+1 < len(toks) {
			return toks[i+1]
		}
		return promTok{}
	}
	// matchers reads label names from a {…} starting at toks[i] == "{" and
	// returns the index after the closing brace.
	matchers := func(i int) ([]string, int, error) {
		var labels []string
		for i++; i < len(toks); i++ {
			t := toks[i]
			switch {
			case t.kind == 'o' && t.text == "}":
				return labels, i + 1, nil
			case t.kind == 'o' && t.text == ",":
			case t.kind == 'i':
				op := next(i)
				if op.kind != 'o' || !slices.Contains([]string{"=", "!=", "=~", "!~"}, op.text) {
					return nil, 0, fmt.Errorf("label %s is not followed by a matcher", t.text)
				}
				if i+2 >= len(toks) || toks[i+2].kind != 's' && toks[i+2].kind != 'v' {
					return nil, 0, fmt.Errorf("label %s has no quoted value", t.text)
				}
				labels = append(labels, t.text)
				i += 2
			default:
				return nil, 0, fmt.Errorf("unexpected %q in label matchers", t.text)
			}
		}
		return nil, 0, fmt.Errorf("unclosed {")
	}
	for i := 0; i < len(toks); {
		t := toks[i]
		switch {
		case t.kind == 'i' && promGroupingWords[t.text]:
			if n := next(i); n.kind == 'o' && n.text == "(" {
				j := i + 2
				for ; j < len(toks) && toks[j].text != ")"; j++ {
					if toks[j].kind == 'i' {
						refs.grouping = append(refs.grouping, toks[j].text)
					} else if toks[j].text != "," {
						return refs, fmt.Errorf("unexpected %q in %s (…)", toks[j].text, t.text)
					}
				}
				i = j + 1
				continue
			}
			i++
		case t.kind == 'i' && (promKeywords[t.text] || next(i).kind == 'o' && next(i).text == "("):
			i++ // operator, aggregation or function
		case t.kind == 'i':
			s := promSelector{metric: t.text}
			i++
			if n := next(i - 1); n.kind == 'o' && n.text == "{" {
				labels, j, err := matchers(i)
				if err != nil {
					return refs, fmt.Errorf("%s: %w", t.text, err)
				}
				s.labels = labels
				i = j
			}
			refs.selectors = append(refs.selectors, s)
		case t.kind == 'o' && t.text == "{":
			_, j, err := matchers(i)
			if err != nil {
				return refs, err
			}
			i = j
		default:
			i++
		}
	}
	return refs, nil
}

// loadMetrics scans the module and makes sure the scan works at all: the
// metrics README.md (Metrics) promises must be among those found.
func loadMetrics(t *testing.T, root string) metricSet {
	t.Helper()
	defs, err := scanMetrics(root)
	if err != nil {
		t.Fatalf("scan Go source for metrics: %v", err)
	}
	for name, kinds := range map[string][]string{
		"mailferry_messages_accepted_total":       {"counter"},
		"mailferry_deliveries_total":              {"counter"},
		"mailferry_delivery_duration_seconds":     {"histogram"},
		"mailferry_queue_depth":                   {"gauge", "desc"},
		"mailferry_http_requests_total":           {"counter"},
		"mailferry_http_request_duration_seconds": {"histogram"},
	} {
		d, ok := defs[name]
		if !ok {
			t.Fatalf("the Go source scan did not find %s (found: %s): the scanner in metrics_test.go no longer matches how metrics are defined", name, defs.names())
		}
		if !slices.Contains(kinds, d.kind) {
			t.Errorf("%s is defined as a %s at %s; README.md (Metrics) makes it a %s", name, d.kind, d.pos, strings.Join(kinds, " or "))
		}
	}
	return defs
}
