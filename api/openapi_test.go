package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

// spec checks live responses against openapi.yaml, so the document and
// the server cannot drift apart: every response a test receives through
// the harness is validated.
type spec struct {
	doc      map[string]any
	mu       sync.Mutex // tests run in parallel; the compiler and cache are not safe alone
	compiler *jsonschema.Compiler
	cache    map[string]*jsonschema.Schema
}

const specURL = "file:///openapi.json"

func loadSpec(t testing.TB) *spec {
	t.Helper()
	raw, err := os.ReadFile("../openapi.yaml")
	if err != nil {
		t.Fatalf("read openapi.yaml: %v", err)
	}
	var y any
	if err := yaml.Unmarshal(raw, &y); err != nil {
		t.Fatalf("parse openapi.yaml: %v", err)
	}
	// Round-trip through JSON so numbers are json.Number, as jsonschema wants.
	j, err := json.Marshal(y)
	if err != nil {
		t.Fatalf("openapi.yaml to JSON: %v", err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		t.Fatalf("openapi JSON: %v", err)
	}
	if v, _ := doc.(map[string]any)["openapi"].(string); !strings.HasPrefix(v, "3.1") {
		t.Fatalf("openapi.yaml is version %q, want 3.1.x", v)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource(specURL, doc); err != nil {
		t.Fatalf("add openapi resource: %v", err)
	}
	return &spec{doc: doc.(map[string]any), compiler: c, cache: map[string]*jsonschema.Schema{}}
}

// pointer escapes a JSON pointer token (RFC 6901 3).
func pointer(tok string) string {
	return strings.ReplaceAll(strings.ReplaceAll(tok, "~", "~0"), "/", "~1")
}

// match finds the path template of the spec for a request path; a
// literal segment wins over a parameter (/v1/messages/batch is not
// /v1/messages/{id}).
func (s *spec) match(path string) (string, bool) {
	best, bestParams := "", -1
	paths, _ := s.doc["paths"].(map[string]any)
	path, _, _ = strings.Cut(path, "?")
	reqParts := strings.Split(strings.Trim(path, "/"), "/")
	for tmpl := range paths {
		parts := strings.Split(strings.Trim(tmpl, "/"), "/")
		if len(parts) != len(reqParts) {
			continue
		}
		ok := true
		for i := range parts {
			if !strings.HasPrefix(parts[i], "{") && parts[i] != reqParts[i] {
				ok = false
				break
			}
		}
		if params := strings.Count(tmpl, "{"); ok && (bestParams < 0 || params < bestParams) {
			best, bestParams = tmpl, params
		}
	}
	return best, bestParams >= 0
}

// validate checks one response; body is the response body already read.
func (s *spec) validate(t testing.TB, method, path string, resp *http.Response, body []byte) {
	t.Helper()
	path, _, _ = strings.Cut(path, "?") // the query is not part of the template
	tmpl, ok := s.match(path)
	if !ok {
		t.Errorf("openapi: %s %s: path not in openapi.yaml", method, path)
		return
	}
	op, ok := s.doc["paths"].(map[string]any)[tmpl].(map[string]any)[strings.ToLower(method)].(map[string]any)
	if !ok {
		t.Errorf("openapi: %s %s: method not in openapi.yaml", method, tmpl)
		return
	}
	code := strconv.Itoa(resp.StatusCode)
	ptr := fmt.Sprintf("#/paths/%s/%s/responses/%s", pointer(tmpl), strings.ToLower(method), code)
	r, ok := op["responses"].(map[string]any)[code].(map[string]any)
	if !ok {
		t.Errorf("openapi: %s %s: status %d not documented (body %s)", method, tmpl, resp.StatusCode, body)
		return
	}
	if ref, ok := r["$ref"].(string); ok {
		name := strings.TrimPrefix(ref, "#/components/responses/")
		r = s.doc["components"].(map[string]any)["responses"].(map[string]any)[name].(map[string]any)
		ptr = "#/components/responses/" + pointer(name)
	}
	if _, ok := r["content"]; !ok {
		// A response documented without content (204) must have none.
		if len(body) > 0 {
			t.Errorf("openapi: %s %s %d: documented without content, got %s", method, tmpl, resp.StatusCode, body)
		}
		return
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		t.Errorf("openapi: %s %s %d: bad Content-Type %q", method, tmpl, resp.StatusCode, resp.Header.Get("Content-Type"))
		return
	}
	content, _ := r["content"].(map[string]any)
	if _, ok := content[mt]; !ok {
		t.Errorf("openapi: %s %s %d: Content-Type %s not documented", method, tmpl, resp.StatusCode, mt)
		return
	}
	if !strings.HasSuffix(mt, "json") {
		return
	}
	loc := specURL + ptr + "/content/" + pointer(mt) + "/schema"
	s.mu.Lock()
	sch, ok := s.cache[loc]
	if !ok {
		sch, err = s.compiler.Compile(loc)
		if err != nil {
			s.mu.Unlock()
			t.Fatalf("openapi: compile %s: %v", loc, err)
		}
		s.cache[loc] = sch
	}
	s.mu.Unlock()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		t.Errorf("openapi: %s %s %d: body is not JSON: %v: %s", method, tmpl, resp.StatusCode, err, body)
		return
	}
	if err := sch.Validate(inst); err != nil {
		t.Errorf("openapi: %s %s %d: response does not match openapi.yaml: %v\nbody: %s", method, tmpl, resp.StatusCode, err, body)
	}
}

// readBody reads and closes a response body.
func readBody(t testing.TB, resp *http.Response) []byte {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return b
}
