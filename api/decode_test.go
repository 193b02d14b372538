package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/mailferry/mailferry/mail"
)

// jsonFields lists the JSON names of a struct's fields, embedded structs
// included.
func jsonFields(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// TestKnownFields keeps the field lists scanJSON and explainSend use in
// step with the structs the body decodes into.
func TestKnownFields(t *testing.T) {
	req := jsonFields(reflect.TypeOf(sendRequest{}))
	for _, name := range req {
		if !knownSendField(name) {
			t.Errorf("knownSendField(%q) = false; sendRequest has it", name)
		}
	}
	for _, name := range []string{"", "From", "attachment", "content", "filename", "x"} {
		if knownSendField(name) {
			t.Errorf("knownSendField(%q) = true; sendRequest has no such field", name)
		}
	}
	if len(req) != 15 {
		t.Errorf("sendRequest has %d JSON fields %v; update knownSendField", len(req), req)
	}
	att := jsonFields(reflect.TypeOf(mail.Attachment{}))
	for _, name := range att {
		if !knownAttachmentField([]byte(name)) || !knownAttachmentField([]byte(strings.ToUpper(name))) {
			t.Errorf("knownAttachmentField(%q) = false; mail.Attachment has it", name)
		}
	}
	if len(att) != 4 {
		t.Errorf("mail.Attachment has %d JSON fields %v; update knownAttachmentField", len(att), att)
	}
	for _, name := range []string{"", "size", "file_name", "from"} {
		if knownAttachmentField([]byte(name)) {
			t.Errorf("knownAttachmentField(%q) = true", name)
		}
	}
}

// legacyDecodeSend is decodeSend as it was before scanJSON: the depth
// check, then the map-and-strict-Decoder path that explainSend keeps for
// refused bodies. Its answers are the contract the one-pass path keeps.
func legacyDecodeSend(body []byte) (*sendRequest, *problem) {
	if err := legacyCheckDepth(body, maxJSONDepth); err != nil {
		return nil, newProblem(kindMalformed, err.Error())
	}
	return legacyExplainSend(body)
}

// legacyExplainSend is explainSend as it was before issue 18 item 10: the
// body into a map, every unknown top-level field listed, in full. Its
// answers, cut to the first maxListedUnknown names of at most
// maxListedName octets (boundedLegacy), are what explainSend must give.
func legacyExplainSend(body []byte) (*sendRequest, *problem) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, malformedJSON(err)
	}
	if top == nil {
		return nil, newProblem(kindMalformed, "the body must be a JSON object")
	}
	var unknown []string
	for name := range top {
		if !knownSendField(name) {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, boundedLegacy(unknown)
	}
	var req sendRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, malformedJSON(err)
	}
	if dec.More() {
		return nil, newProblem(kindMalformed, "the body holds more than one JSON value")
	}
	return &req, nil
}

// boundedLegacy is the old answer naming every unknown field, sorted,
// cut as explainSend cuts it.
func boundedLegacy(unknown []string) *problem {
	listed := unknown[:min(len(unknown), maxListedUnknown)]
	fields := make([]FieldProblem, len(listed))
	quoted := make([]string, len(listed))
	for i, n := range listed {
		fields[i] = FieldProblem{Field: clip(n, maxListedName), Detail: "unknown field"}
		quoted[i] = fmt.Sprintf("%q", fields[i].Field)
	}
	detail := "unknown fields: " + strings.Join(quoted, ", ")
	if more := len(unknown) - len(listed); more > 0 {
		detail += fmt.Sprintf(" and %d more unknown fields", more)
	}
	return newProblem(kindUnknownField, detail, fields...)
}

func legacyCheckDepth(b []byte, max int) error {
	depth, inString, escaped := 0, false, false
	for _, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > max {
				return fmt.Errorf("JSON nested deeper than %d levels", max)
			}
		case '}', ']':
			depth--
		}
	}
	return nil
}

// sameAsLegacy fails unless decodeSend answers body exactly as
// legacyDecodeSend does: the same request, or the same problem.
func sameAsLegacy(t *testing.T, body []byte) {
	t.Helper()
	s := &server{}
	got, gotP := s.decodeSend(body)
	want, wantP := legacyDecodeSend(body)
	if !reflect.DeepEqual(gotP, wantP) {
		t.Fatalf("body %q:\nproblem %+v\nwant    %+v", body, gotP, wantP)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("body %q:\nrequest %+v\nwant    %+v", body, got, want)
	}
}

var decodeCorpus = []string{
	`{"from":"Alice <alice@example.com>","to":["bob@example.net"],"subject":"Hi","text":"Hello"}`,
	`{"from":"alice@example.com","to":["b@example.net"],"bcc":["h@example.org"],"html":"<p>x</p>","headers":{"X-A":"b","tos":"x"},"attachments":[{"filename":"a.txt","content":"eA==","content_type":"text/plain","content_id":"c1"}],"tags":["t"],"metadata":{"k":"v","attachments":"x"},"send_at":"2030-01-01T00:00:00Z"}`,
	`{"raw":"RnJvbTogYUBleGFtcGxlLmNvbQ0KDQpoaQ0K","to":["bob@example.net"]}`,
	``, ` `, `null`, `[]`, `[1,2,3]`, `"x"`, `1`, `true`, `{}`, ` { } `, `{}{}`, `{} {}`, `{}}`, `{} x`, `{"to":["a@example.net"]} {}`,
	`{"from": "a@example.com",`, `{"from"`, `{"from":}`, `{,}`, `{"a":1,}`, `}{`, `]]]{`, `{"x":"\`,
	`{"tos":["x@example.net"]}`, `{"tos":1,"subjcet":"x"}`, `{"tos":1,"tos":2}`, `{"From":"a@example.com"}`, `{"FROM":1}`,
	`{"fr\u006fm":"a@example.com"}`, `{"t\u006f":["a@example.net"],"x\u0000":1}`, `{"\ud800":1}`, "{\"from\xff\":1}", "{\"from\":\"a\xffb\"}", `{"":1}`,
	`{"from":1}`, `{"to":"bob@example.net"}`, `{"to":[1]}`, `{"headers":{"a":1}}`, `{"metadata":[]}`, `{"send_at":"tomorrow"}`, `{"send_at":null}`, `{"send_at":1}`,
	`{"attachments":[{"filename":"a.txt","size":"1"}]}`, `{"attachments":[{"FileName":"a.txt","CONTENT":"eA=="}]}`, `{"attachments":[{"fil\u0065name":"a"}]}`,
	`{"attachments":[{"size":1},{"weight":2}]}`, `{"attachments":[{"size":1,"filename":2}]}`, `{"attachments":[{"filename":2,"size":1}]}`, `{"to":1,"attachments":[{"size":1}]}`,
	`{"attachments":[{"size":1}],"to":1}`, `{"attachments":{"size":1}}`, `{"attachments":[[{"size":1}]]}`, `{"attachments":[{"filename":{"size":1}}]}`,
	`{"Attachments":[{"size":1}]}`, `{"x":{"attachments":[{"size":1}]}}`, `{"tags":[{"a":1}]}`, `{"metadata":{"a":{"b":1}}}`,
	`{"subject":"a\"b\\","text":"}]{[\"","to":["x"]}`, `{"subject":"\u00e9\ud83d\ude00"}`,
	`{"a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`,
	`{"metadata":` + strings.Repeat(`{"k":`, 31) + `1` + strings.Repeat("}", 31) + `}`,
	`{"metadata":` + strings.Repeat(`{"k":`, 32) + `1` + strings.Repeat("}", 32) + `}`,
	`"` + strings.Repeat("[", 100) + `"`, `{"to":["a"]}` + strings.Repeat("[", 40),
	strings.Repeat("]", 40) + strings.Repeat("[", 40), strings.Repeat("}", 10) + `{"tos":1}`,
	// Issue 18 item 10: more unknown fields than are listed, names longer than shown.
	manyUnknown(21), manyUnknown(45), `{"b":1,"a":[1,"c",{"d":2}],"e":"f","from":"x"}`, `{"` + strings.Repeat("\u00e9", 40) + `":1}`,
	`{"` + strings.Repeat("k", 100) + `":{"x":[","]},"to":[]}`, `{"a":1,"a":2,"b":{"a":3}}`, " \t\r\n{\"zz\":1} ",
}

// manyUnknown is a body of n unknown keys, in reverse sort order.
func manyUnknown(n int) string {
	var b strings.Builder
	b.WriteString(`{"to":["a@example.net"]`)
	for i := n; i > 0; i-- {
		fmt.Fprintf(&b, `,"k%03d":%d`, i, i)
	}
	return b.String() + "}"
}

func TestDecodeSendSameAsLegacy(t *testing.T) {
	for _, body := range decodeCorpus {
		sameAsLegacy(t, []byte(body))
	}
}

// FuzzDecodeSend checks decodeSend against the three-pass decoder it
// replaced: whatever the body, the same request or the same problem.
func FuzzDecodeSend(f *testing.F) {
	for _, body := range decodeCorpus {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		sameAsLegacy(t, body)
	})
}
