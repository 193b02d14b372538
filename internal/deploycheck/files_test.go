package deploycheck

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const modulePath = "github.com/mailferry/mailferry"

// repoRoot is the directory of the module's go.mod, found upwards from the
// test's working directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(data, []byte("module "+modulePath+"\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod of %s above the working directory", modulePath)
		}
		dir = parent
	}
}

// readRepoFile reads a file by its slash-separated path in the repository.
func readRepoFile(t *testing.T, root, rel string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return data
}

// deployFiles lists every regular file under deploy/, slash-separated and
// relative to the repository, in walk order.
func deployFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(filepath.Join(root, "deploy"), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, err := filepath.Rel(root, path)
			if err != nil {
				return err
			}
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list deploy/: %v", err)
	}
	return out
}

func isYAML(name string) bool {
	return strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")
}

// yamlDoc is one document of a multi-document YAML file.
type yamlDoc struct {
	file  string // slash-separated path, for messages
	index int    // 0-based position in the file
	node  *yaml.Node
}

func (d yamlDoc) String() string {
	return fmt.Sprintf("%s (document %d, line %d)", d.file, d.index+1, d.node.Line)
}

// decode decodes the document into v.
func (d yamlDoc) decode(v any) error {
	if err := d.node.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", d, err)
	}
	return nil
}

// parseYAML splits data into its documents; empty documents (a trailing
// "---") are dropped.
func parseYAML(file string, data []byte) ([]yamlDoc, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []yamlDoc
	for i := 0; ; i++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, i+1, err)
		}
		if len(n.Content) == 0 || n.Content[0].Kind == 0 || (n.Content[0].Kind == yaml.ScalarNode && n.Content[0].Tag == "!!null") {
			continue
		}
		docs = append(docs, yamlDoc{file: file, index: i, node: &n})
	}
}

// report fails t once per problem, so a run lists everything wrong.
func report(t *testing.T, problems []string) {
	t.Helper()
	for _, p := range problems {
		t.Error(p)
	}
}

// problems collects messages; add formats one.
type problems []string

func (p *problems) add(format string, args ...any) {
	*p = append(*p, fmt.Sprintf(format, args...))
}

// stringList is a YAML value that may be one string or a list of strings
// (compose command, entrypoint, healthcheck test). A lone string is split
// like a shell would, which is what compose does.
type stringList []string

func (l *stringList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		words, err := shellWords(n.Value, nil)
		if err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		*l = words
		return nil
	case yaml.SequenceNode:
		var s []string
		if err := n.Decode(&s); err != nil {
			return err
		}
		*l = s
		return nil
	}
	return fmt.Errorf("line %d: want a string or a list of strings", n.Line)
}

// shellWords splits s into words as sh does for simple commands: blanks
// separate, single quotes are literal, double quotes allow \ escapes and
// ${NAME} from vars. Unknown variables are an error, as are $(…) and
// unbalanced quotes: a check must not guess.
func shellWords(s string, vars map[string]string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		inTok bool
	)
	expand := func(i int) (int, error) {
		// s[i] == '$'
		rest := s[i+1:]
		var name string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				return 0, fmt.Errorf("unclosed ${ in %q", s)
			}
			name = rest[1:end]
			i += end + 2
		default:
			n := 0
			for n < len(rest) && (rest[n] == '_' || rest[n] >= 'A' && rest[n] <= 'Z' || rest[n] >= 'a' && rest[n] <= 'z' || rest[n] >= '0' && rest[n] <= '9') {
				n++
			}
			if n == 0 {
				return 0, fmt.Errorf("unsupported $ expression in %q", s)
			}
			name = rest[:n]
			i += n + 1
		}
		v, ok := vars[name]
		if !ok {
			return 0, fmt.Errorf("unknown variable $%s in %q", name, s)
		}
		cur.WriteString(v)
		return i, nil
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inTok {
				words = append(words, cur.String())
				cur.Reset()
				inTok = false
			}
			i++
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("unbalanced ' in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+end])
			inTok = true
			i += end + 2
		case c == '"':
			inTok = true
			i++
			for {
				if i >= len(s) {
					return nil, fmt.Errorf("unbalanced \" in %q", s)
				}
				if s[i] == '"' {
					i++
					break
				}
				if s[i] == '\\' && i+1 < len(s) {
					cur.WriteByte(s[i+1])
					i += 2
					continue
				}
				if s[i] == '$' {
					var err error
					if i, err = expand(i); err != nil {
						return nil, err
					}
					continue
				}
				cur.WriteByte(s[i])
				i++
			}
		case c == '\\' && i+1 < len(s):
			cur.WriteByte(s[i+1])
			inTok = true
			i += 2
		case c == '$':
			var err error
			if i, err = expand(i); err != nil {
				return nil, err
			}
			inTok = true
		default:
			cur.WriteByte(c)
			inTok = true
			i++
		}
	}
	if inTok {
		words = append(words, cur.String())
	}
	return words, nil
}
