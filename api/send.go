package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/store"
)

// Limits on the parts of a request that are not mail.
const (
	maxJSONDepth       = 32
	maxTags            = 10
	maxTagLen          = 64
	maxMetadataKeys    = 50
	maxMetadataKeyLen  = 64
	maxMetadataValLen  = 1024
	maxIdempotencyKey  = 255
	requestOverheadMax = 1 << 20 // JSON around the message: field names, metadata
)

// sendRequest is the body of POST /v1/messages: a structured draft or a
// ready message in raw.
type sendRequest struct {
	mail.Draft
	Raw      rawField          `json:"raw"`
	Tags     []string          `json:"tags"`
	Metadata map[string]string `json:"metadata"`
	SendAt   *time.Time        `json:"send_at"`
	// RequireTLS: REQUIRETLS (RFC 8689): only over verified TLS to servers
	// that offer REQUIRETLS, else bounce 5.7.30.
	RequireTLS bool `json:"require_tls"`
}

type recipientReceipt struct {
	Email  string `json:"email"`
	Status string `json:"status"`
}

type sendResponse struct {
	ID         string             `json:"id"`
	MessageID  string             `json:"message_id"`
	Recipients []recipientReceipt `json:"recipients"`
	Warnings   []string           `json:"warnings"`
}

// suppress marks the recipients that were on the tenant's suppression
// list and says so in a warning each: the message is accepted all the
// same, and they are never sent.
func (resp sendResponse) suppress(suppressed []intake.Suppression) sendResponse {
	if len(suppressed) == 0 {
		return resp
	}
	resp.Recipients = slices.Clone(resp.Recipients)
	resp.Warnings = slices.Clone(resp.Warnings)
	for _, sup := range suppressed {
		for i := range resp.Recipients {
			if resp.Recipients[i].Email == sup.Email {
				resp.Recipients[i].Status = store.RecipientSuppressed
			}
		}
		resp.Warnings = append(resp.Warnings, fmt.Sprintf("recipient %s is on the suppression list (%s) and will not be sent to", sup.Email, sup.Reason))
	}
	return resp
}

// maxRequestBytes allows for base64 (4/3) around a message of the maximum
// size; the built message itself is held to MaxMessageBytes afterwards.
func (s *server) maxRequestBytes() int64 {
	return s.opts.MaxMessageBytes/3*4 + 4 + requestOverheadMax
}

func (s *server) sendMessage(w http.ResponseWriter, r *http.Request) {
	key := principal(r.Context())
	if p := checkContentType(r); p != nil {
		writeProblem(w, p)
		return
	}
	buf, res, ok := s.readBody(w, r, s.maxRequestBytes())
	if !ok {
		return
	}
	// The reservation lasts until the message is accepted or refused.
	defer res.Release()
	// One form of the message at a time: the body is let go once decoded
	// (the base64 of raw straight into bytes), and the decoded bytes once
	// built into the message; only the idempotency hash is kept of it.
	sum := sha256.Sum256(buf.Bytes())
	req, p := s.decodeSend(buf.Bytes())
	s.putBodyBuffer(buf)
	buf = nil
	if p != nil {
		writeProblem(w, p)
		return
	}
	idemKey, p := idempotencyKey(r.Header)
	if p != nil {
		writeProblem(w, p)
		return
	}
	msg, p := s.build(req)
	if p != nil {
		writeProblem(w, p)
		return
	}
	if p := allowedSender(key, msg, req.Raw.set); p != nil {
		writeProblem(w, p)
		return
	}
	for _, from := range msg.From {
		if p := s.requireVerified(r.Context(), key.TenantID, from.Domain()); p != nil {
			writeProblem(w, p)
			return
		}
	}
	sub := intake.Submission{
		TenantID: key.TenantID,
		APIKeyID: key.ID,
		Ingress:  "api",
		Message:  msg,
		Tags:     req.Tags,
		Metadata: req.Metadata,
		// RequireTLS is stored with the message; delivery enforces it.
		RequireTLS: req.RequireTLS,
	}
	if req.SendAt != nil {
		sub.SendAt = req.SendAt.UTC()
	}
	receipt, err := s.opts.Intake.NewReceipt(sub)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	resp := sendResponse{ID: receipt.ID.String(), MessageID: receipt.MessageID, Warnings: []string{},
		Recipients: make([]recipientReceipt, 0, len(receipt.Recipients))}
	for _, rc := range receipt.Recipients {
		resp.Recipients = append(resp.Recipients, recipientReceipt{Email: rc, Status: store.RecipientQueued})
	}
	if s.opts.Warn != nil && len(msg.From) > 0 {
		resp.Warnings = append(resp.Warnings, s.opts.Warn(r.Context(), msg.From[0].Domain())...)
	}

	if idemKey == "" {
		suppressed, err := s.opts.Intake.Accept(r.Context(), receipt, sub)
		if err != nil {
			s.unavailable(w, r, err)
			return
		}
		writeJSON(w, http.StatusAccepted, resp.suppress(suppressed))
		return
	}
	var encoded []byte
	existing, err := s.opts.Intake.SubmitIdempotent(r.Context(), receipt, sub, store.Idempotency{
		Key: idemKey, RequestHash: sum[:], Status: http.StatusAccepted,
	}, func(suppressed []intake.Suppression) ([]byte, error) {
		b, merr := json.Marshal(resp.suppress(suppressed))
		encoded = b
		return b, merr
	})
	if err != nil {
		s.unavailable(w, r, err)
		return
	}
	writeIdempotent(w, http.StatusAccepted, encoded, existing, sum[:])
}

// writeIdempotent answers a request made with an Idempotency-Key: the new
// answer (status, encoded) when this request made it, else the recorded one
// when the body is the same, else 409.
func writeIdempotent(w http.ResponseWriter, status int, encoded []byte, existing *store.Idempotency, sum []byte) {
	if existing == nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(append(encoded, '\n'))
		return
	}
	if !bytes.Equal(existing.RequestHash, sum) {
		// 409: the request conflicts with the one already recorded under
		// this key (RFC 9110 15.5.10); nothing was sent.
		writeProblem(w, newProblem(kindIdemReused, "this Idempotency-Key was used in the last 24 hours for a different request",
			FieldProblem{Field: "Idempotency-Key", Detail: "reused with a different body"}))
		return
	}
	// A repeat: the first answer, and nothing new sent.
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Idempotent-Replayed", "true")
	w.WriteHeader(existing.Status)
	_, _ = w.Write(append(bytes.TrimRight(existing.Response, "\n"), '\n'))
}

// idempotencyKey returns the request's Idempotency-Key, "" when it has
// none (then the request is not idempotent), or a 400 naming the header
// when the key is malformed: blank, more than one, longer than 255
// octets, or not printable ASCII. A blank key is not taken for no key: a
// client that sent the header meant its retries to be safe, and would
// otherwise send twice without knowing. 400 as for any malformed request;
// draft-ietf-httpapi-idempotency-key-header answers a required key that
// is missing with 400 too.
func idempotencyKey(h http.Header) (string, *problem) {
	vals := h.Values("Idempotency-Key")
	bad := func(detail string) (string, *problem) {
		return "", newProblem(kindMalformed, "Idempotency-Key must be one key of 1 to 255 printable ASCII characters, not all spaces",
			FieldProblem{Field: "Idempotency-Key", Detail: detail})
	}
	switch {
	case len(vals) == 0:
		return "", nil
	case len(vals) > 1:
		return bad(fmt.Sprintf("given %d times; send it once", len(vals)))
	}
	// net/http has trimmed the value (RFC 9110 5.5), so "   " arrives as "".
	key := vals[0]
	switch {
	case strings.Trim(key, " \t") == "":
		return bad("blank")
	case len(key) > maxIdempotencyKey:
		return bad(fmt.Sprintf("%d octets; the limit is %d", len(key), maxIdempotencyKey))
	case !printableASCII(key):
		return bad("not printable ASCII")
	}
	return key, nil
}

// maxPooledBody is the largest request buffer kept for reuse: enough for
// the usual transactional message, while a few large attachments do not
// stay in memory for good.
const maxPooledBody = 64 << 10

// bodyBuffer returns an empty buffer for a request body, from the pool,
// with room for what the request announces (plus the bytes.MinRead that
// ReadFrom wants free before it sees EOF), so that a large body is one
// allocation rather than a doubling series. The bytes announced are
// reserved in the budget first, so a client announcing megabytes it does
// not send holds only what the cap allows. Without a budget, a larger
// body grows the buffer as it arrives.
func (s *server) bodyBuffer(contentLength int64) *bytes.Buffer {
	if contentLength > maxPooledBody && s.opts.Budget != nil {
		return bytes.NewBuffer(make([]byte, 0, contentLength+bytes.MinRead))
	}
	buf, _ := s.bodies.Get().(*bytes.Buffer)
	if buf == nil {
		buf = new(bytes.Buffer)
	}
	buf.Reset()
	if contentLength > 0 && contentLength <= maxPooledBody {
		buf.Grow(int(contentLength) + bytes.MinRead)
	}
	return buf
}

// readBody reads r's body, at most limit bytes, inside the process's
// bytes-in-flight budget. What announces itself too large is refused
// without being read; the bytes are reserved before they are read, by
// Content-Length when the client gives it, else as they arrive. The
// caller releases res once the request is accepted or refused, and gives
// buf back with putBodyBuffer. ok false: the problem is written.
func (s *server) readBody(w http.ResponseWriter, r *http.Request, limit int64) (buf *bytes.Buffer, res *budget.Reservation, ok bool) {
	if r.ContentLength > limit {
		writeProblem(w, tooLarge(r.ContentLength, limit))
		return nil, nil, false
	}
	res, err := s.opts.Budget.Reserve(max(r.ContentLength, 0))
	if err != nil {
		writeProblem(w, busy())
		return nil, nil, false
	}
	buf = s.bodyBuffer(r.ContentLength)
	if _, err := buf.ReadFrom(res.Reader(http.MaxBytesReader(w, r.Body, limit))); err != nil {
		s.putBodyBuffer(buf)
		res.Release()
		writeProblem(w, readProblem(err, limit))
		return nil, nil, false
	}
	return buf, res, true
}

func (s *server) putBodyBuffer(buf *bytes.Buffer) {
	if buf.Cap() <= maxPooledBody {
		s.bodies.Put(buf)
	}
}

func checkContentType(r *http.Request) *problem {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return newProblem(kindUnsupported, "send the message as Content-Type: application/json")
	}
	return nil
}

// busy refuses a request that would take the message bytes in flight
// past MAILFERRY_MAX_BYTES_IN_FLIGHT. A 503, as for an outage: nothing
// was accepted, and the same request later will be.
func busy() *problem {
	p := newProblem(kindBusy, "too many large messages are in flight on this server (MAILFERRY_MAX_BYTES_IN_FLIGHT); nothing was accepted, try again",
		FieldProblem{Field: "body", Detail: "bytes in flight at the cap"})
	p.retryAfter = 2 * time.Second
	return p
}

func tooLarge(got, limit int64) *problem {
	detail := fmt.Sprintf("the request body is larger than %d bytes", limit)
	if got > 0 {
		detail = fmt.Sprintf("the request body of %d bytes is larger than %d bytes", got, limit)
	}
	return newProblem(kindTooLarge, detail)
}

// decodeSend parses the JSON body strictly: well-formed, not too deep, no
// unknown fields, each field of its type.
//
// A body that is fine, nearly every body, is read twice: by scanJSON, one
// loop over the bytes that checks the depth and that every field name is
// known, and by one json.Unmarshal into the request. Anything wrong is
// left to explainSend, which reads the body again to name the problem;
// refusals are rare and their answers stay exactly what they always were.
func (s *server) decodeSend(body []byte) (*sendRequest, *problem) {
	sc := scanJSON(body, maxJSONDepth)
	if sc.tooDeep {
		return nil, newProblem(kindMalformed, fmt.Sprintf("JSON nested deeper than %d levels", maxJSONDepth))
	}
	if sc.object && !sc.unknown {
		var req sendRequest
		if err := json.Unmarshal(body, &req); err == nil {
			return &req, nil
		}
	}
	return explainSend(body)
}

// explainSend decodes a body that decodeSend found wrong, the slow way,
// to name what is wrong: a syntax error first, then the unknown fields at
// the top level, then the first wrong type or unknown nested field.
// Should it find nothing wrong after all, the request stands.
func explainSend(body []byte) (*sendRequest, *problem) {
	// The syntax of the whole body first, without building anything of it:
	// a map of a million unknown keys took seconds and hundreds of
	// megabytes only to be refused.
	if !json.Valid(body) {
		var probe struct{} // for the *SyntaxError, with its offset
		return nil, malformedJSON(json.Unmarshal(body, &probe))
	}
	unknown, ok := unknownTopFields(body)
	if !ok {
		return nil, newProblem(kindMalformed, "the body must be a JSON object")
	}
	if p := unknown.problem(); p != nil {
		return nil, p
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

// A refusal of unknown fields names a few of them, each cut short: a
// body of a million unknown keys, or of one key of megabytes, gets an
// answer of a few kilobytes rather than one larger than itself.
const (
	maxListedUnknown = 20
	maxListedName    = 64 // octets of a name shown
)

// unknownFields keeps the first maxListedUnknown unknown field names in
// sort order, however many the body has, and counts the rest.
type unknownFields struct {
	names []string // sorted, distinct, at most maxListedUnknown
	more  int      // unknown keys beyond names (a repeated key counts again)
}

func (u *unknownFields) add(name string) {
	i, found := slices.BinarySearch(u.names, name)
	switch {
	case found: // a repeated key, already listed
	case len(u.names) < maxListedUnknown:
		u.names = slices.Insert(u.names, i, name)
	case i == len(u.names): // sorts after every name listed
		u.more++
	default: // takes the place of the last name listed, which is counted instead
		copy(u.names[i+1:], u.names[i:len(u.names)-1])
		u.names[i] = name
		u.more++
	}
}

func (u *unknownFields) problem() *problem {
	if len(u.names) == 0 {
		return nil
	}
	fields := make([]FieldProblem, len(u.names))
	quoted := make([]string, len(u.names))
	for i, n := range u.names {
		fields[i] = FieldProblem{Field: clip(n, maxListedName), Detail: "unknown field"}
		quoted[i] = fmt.Sprintf("%q", fields[i].Field)
	}
	detail := "unknown fields: " + strings.Join(quoted, ", ")
	if u.more > 0 {
		detail += fmt.Sprintf(" and %d more unknown fields", u.more)
	}
	return newProblem(kindUnknownField, detail, fields...)
}

// unknownTopFields reads the keys of the top-level object of body, which
// must be valid JSON, in one loop over the bytes (json.Decoder's Token
// took seconds over a million keys); ok is false when the body is not an
// object (null). Only the names kept are held in memory.
func unknownTopFields(body []byte) (u unknownFields, ok bool) {
	i := 0
	for i < len(body) && isJSONSpace(body[i]) {
		i++
	}
	if i == len(body) || body[i] != '{' {
		return u, false
	}
	depth := 0
	expectKey := false
	for ; i < len(body); i++ {
		switch c := body[i]; c {
		case '"':
			end := stringEnd(body, i)
			if depth == 1 && expectKey {
				if name := jsonKey(body[i : end+1]); !knownSendField(name) {
					u.add(name)
				}
			}
			i, expectKey = end, false
		case '{', '[':
			depth++
			expectKey = c == '{'
		case '}', ']':
			depth--
		case ',':
			expectKey = true // inside an array too, where no string is a key at depth 1
		}
	}
	return u, true
}

// stringEnd returns the index of the quote that closes the JSON string
// opening at b[start].
func stringEnd(b []byte, start int) int {
	for i := start + 1; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return len(b) - 1
}

// jsonKey is the value of the quoted JSON string q, decoded as
// encoding/json does when it holds an escape or is not valid UTF-8.
func jsonKey(q []byte) string {
	text := q[1 : len(q)-1]
	if bytes.IndexByte(text, '\\') < 0 && utf8.Valid(text) {
		return string(text)
	}
	var s string
	_ = json.Unmarshal(q, &s)
	return s
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// clip cuts s to at most n octets, on a UTF-8 boundary, and marks the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

// knownSendField reports whether name is a JSON field of sendRequest,
// matched exactly; TestKnownFields keeps it in step with the struct.
func knownSendField(name string) bool {
	switch name {
	case "from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "headers", "attachments",
		"raw", "tags", "metadata", "send_at", "require_tls":
		return true
	}
	return false
}

// knownAttachmentField reports whether name is a JSON field of
// mail.Attachment. encoding/json matches the fields of a nested struct
// without regard to case, so this does too.
func knownAttachmentField(name []byte) bool {
	for _, f := range [...]string{"filename", "content_type", "content", "content_id"} {
		if bytes.EqualFold(name, []byte(f)) {
			return true
		}
	}
	return false
}

func malformedJSON(err error) *problem {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return newProblem(kindMalformed, fmt.Sprintf("invalid JSON at byte %d: %v", syn.Offset, syn))
	case errors.As(err, &typ):
		// The path names the embedded Draft struct; clients know only JSON names.
		// Names and values come from the client and are cut short, so
		// that the answer never grows with the body.
		field := clip(strings.TrimPrefix(typ.Field, "Draft."), maxListedName)
		if field == "" {
			return newProblem(kindMalformed, "the body must be a JSON object")
		}
		return newProblem(kindMalformed, fmt.Sprintf("field %q must be %s, not %s", field, jsonKind(typ.Type), clip(typ.Value, maxListedName)),
			FieldProblem{Field: field, Detail: "must be " + jsonKind(typ.Type)})
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := clip(strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`), maxListedName)
		return newProblem(kindUnknownField, fmt.Sprintf("unknown field %q", name), FieldProblem{Field: name, Detail: "unknown field"})
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return newProblem(kindMalformed, "the body is empty or truncated JSON")
	}
	return newProblem(kindMalformed, "invalid JSON: "+clip(err.Error(), 256))
}

func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "an array"
	case reflect.Map, reflect.Struct:
		if t == reflect.TypeOf(time.Time{}) {
			return "an RFC 3339 time string"
		}
		return "an object"
	case reflect.Ptr:
		return jsonKind(t.Elem())
	}
	return t.Kind().String()
}

// scanResult is what scanJSON learnt of a body.
type scanResult struct {
	tooDeep bool // nested deeper than allowed: refuse before any decoder sees it
	object  bool // the first value is an object (not an array, a string, null…)
	unknown bool // an object key that sendRequest or an attachment does not know
}

// scanJSON reads b once, without allocating (unless a key holds an
// escape), before any decoder sees it: it counts nesting outside strings,
// up to max (at most maxJSONDepth), and checks the keys of the top-level
// object and of the objects in its attachments array, the only places a
// field can be unknown (headers and metadata are maps). It does not check
// syntax: json.Unmarshal does, and a malformed body is explained by
// explainSend whatever scanJSON said of it.
func scanJSON(b []byte, max int) scanResult {
	var res scanResult
	var kinds [maxJSONDepth + 1]byte // '{' or '[': the open container at each depth
	max = min(max, maxJSONDepth)
	depth, inString, escaped := 0, false, false
	first := true
	expectKey := false // the next string is an object key
	inKey, keyEsc := false, false
	keyStart := 0
	inAttachments := false // the current top-level key is "attachments"
	at := func(d int, c byte) bool { return d >= 1 && kinds[d] == c }
	for i, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped, keyEsc = true, true
			case c == '"':
				inString = false
				if !inKey {
					break
				}
				inKey = false
				name := b[keyStart:i]
				if keyEsc {
					var s string
					if json.Unmarshal(b[keyStart-1:i+1], &s) != nil {
						res.unknown = true // malformed: let the decoder say so
						break
					}
					name = []byte(s)
				}
				switch {
				case depth == 1 && at(1, '{'):
					inAttachments = string(name) == "attachments"
					if !knownSendField(string(name)) {
						res.unknown = true
					}
				case depth == 3 && inAttachments && at(1, '{') && at(2, '[') && at(3, '{'):
					if !knownAttachmentField(name) {
						res.unknown = true
					}
				}
			}
			continue
		}
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		if first {
			first = false
			res.object = c == '{'
		}
		switch c {
		case '"':
			inString = true
			if expectKey {
				inKey, keyEsc, keyStart = true, false, i+1
			}
			expectKey = false
		case '{', '[':
			depth++
			if depth > max {
				res.tooDeep = true
				return res
			}
			if depth >= 0 {
				kinds[depth] = c
			}
			expectKey = c == '{'
		case '}', ']':
			depth--
			expectKey = false
		case ',':
			expectKey = at(depth, '{')
		default:
			expectKey = false
		}
	}
	return res
}

// build turns the request into a message, naming every bad field.
func (s *server) build(req *sendRequest) (*mail.Message, *problem) {
	var fields []FieldProblem
	now := s.opts.Now()
	opts := mail.BuildOptions{Hostname: s.opts.Hostname, Now: s.opts.Now, MaxRecipients: s.opts.MaxRecipients}
	fields = append(fields, checkTags(req.Tags)...)
	fields = append(fields, checkMetadata(req.Metadata)...)
	if req.SendAt != nil && req.SendAt.After(now.Add(s.opts.MaxScheduleAhead)) {
		fields = append(fields, FieldProblem{Field: "send_at", Detail: fmt.Sprintf("more than %s ahead", humanDuration(s.opts.MaxScheduleAhead))})
	}
	var msg *mail.Message
	var err error
	if req.Raw.set {
		fields = append(fields, rawConflicts(req)...)
		raw, derr := req.Raw.data, req.Raw.err
		req.Raw.data = nil // the message built from it is the one copy kept
		if derr != nil {
			fields = append(fields, FieldProblem{Field: "raw", Detail: "not valid base64: " + derr.Error()})
			return nil, invalid(fields)
		}
		if int64(len(raw)) > s.opts.MaxMessageBytes {
			return nil, messageTooLarge(int64(len(raw)), s.opts.MaxMessageBytes)
		}
		var envelope []string
		envelope = append(envelope, req.To...)
		envelope = append(envelope, req.Cc...)
		envelope = append(envelope, req.Bcc...)
		if len(envelope) == 0 {
			envelope = nil
		}
		msg, err = mail.ParseRaw(raw, envelope, opts)
	} else {
		msg, err = mail.Build(req.Draft, opts)
	}
	var fe mail.FieldErrors
	if errors.As(err, &fe) {
		for _, f := range fe {
			fields = append(fields, FieldProblem{Field: f.Field, Detail: f.Detail})
		}
	} else if err != nil {
		fields = append(fields, FieldProblem{Field: "raw", Detail: err.Error()})
	}
	if len(fields) > 0 {
		return nil, invalid(fields)
	}
	if int64(len(msg.Body)) > s.opts.MaxMessageBytes {
		return nil, messageTooLarge(int64(len(msg.Body)), s.opts.MaxMessageBytes)
	}
	return msg, nil
}

func invalid(fields []FieldProblem) *problem {
	names := make([]string, 0, len(fields))
	for _, f := range fields {
		if !slices.Contains(names, f.Field) {
			names = append(names, f.Field)
		}
	}
	return newProblem(kindInvalid, "invalid: "+strings.Join(names, ", "), fields...)
}

func messageTooLarge(size, limit int64) *problem {
	return newProblem(kindTooLarge, fmt.Sprintf("the message is %d bytes; the limit is %d (MAILFERRY_MAX_MESSAGE_BYTES)", size, limit))
}

// rawConflicts names structured fields sent alongside raw: they would be
// silently ignored, which hides mistakes.
func rawConflicts(req *sendRequest) []FieldProblem {
	var out []FieldProblem
	d := req.Draft
	for name, set := range map[string]bool{
		"from": d.From != "", "reply_to": d.ReplyTo != "", "subject": d.Subject != "", "text": d.Text != "",
		"html": d.HTML != "", "headers": len(d.Headers) > 0, "attachments": len(d.Attachments) > 0,
	} {
		if set {
			out = append(out, FieldProblem{Field: name, Detail: "cannot be combined with raw; put it in the raw message"})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Field < out[j].Field })
	return out
}

// rawField is the raw message of a request. It is decoded from base64
// straight out of the JSON text into one buffer, so that the request is
// never held as JSON, as a base64 string and as bytes at once. Bad base64
// is kept as err for build to name, as the other field problems are.
type rawField struct {
	set  bool // given and not ""
	data []byte
	err  error
}

var stringType = reflect.TypeOf("")

func (f *rawField) UnmarshalJSON(b []byte) error {
	*f = rawField{}
	switch {
	case string(b) == "null":
		return nil
	case len(b) < 2 || b[0] != '"':
		value := "number"
		switch b[0] {
		case '{':
			value = "object"
		case '[':
			value = "array"
		case 't', 'f':
			value = "bool"
		}
		return &json.UnmarshalTypeError{Value: value, Type: stringType}
	}
	text := b[1 : len(b)-1]
	if len(text) == 0 {
		return nil
	}
	f.set = true
	if bytes.IndexByte(text, '\\') >= 0 {
		// JSON escapes (such as \n line breaks): unescape, the slow way.
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		f.data, f.err = decodeBase64(s)
		return nil
	}
	f.data, f.err = decodeBase64Bytes(text)
	return nil
}

// decodeBase64Bytes decodes padded or unpadded base64 into one new
// buffer. The standard decoder skips CR and LF; spaces and tabs cannot
// stand unescaped in a JSON string.
func decodeBase64Bytes(src []byte) ([]byte, error) {
	dst := make([]byte, base64.RawStdEncoding.DecodedLen(len(src)))
	n, err := base64.StdEncoding.Decode(dst, src)
	if err == nil {
		return dst[:n], nil
	}
	n, err = base64.RawStdEncoding.Decode(dst, bytes.TrimRight(src, "="))
	if err != nil {
		return nil, err
	}
	return dst[:n], nil
}

func decodeBase64(s string) ([]byte, error) {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, s)
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, err
	}
	return b, nil
}

func checkTags(tags []string) []FieldProblem {
	var out []FieldProblem
	if len(tags) > maxTags {
		out = append(out, FieldProblem{Field: "tags", Detail: fmt.Sprintf("at most %d tags", maxTags)})
	}
	for i, t := range tags {
		if t == "" || len(t) > maxTagLen || !utf8.ValidString(t) || strings.ContainsFunc(t, isControl) {
			out = append(out, FieldProblem{Field: fmt.Sprintf("tags[%d]", i), Detail: fmt.Sprintf("must be 1 to %d printable characters", maxTagLen)})
		}
	}
	return out
}

func checkMetadata(md map[string]string) []FieldProblem {
	var out []FieldProblem
	if len(md) > maxMetadataKeys {
		out = append(out, FieldProblem{Field: "metadata", Detail: fmt.Sprintf("at most %d keys", maxMetadataKeys)})
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := md[k]
		if k == "" || len(k) > maxMetadataKeyLen || strings.ContainsFunc(k, isControl) {
			out = append(out, FieldProblem{Field: "metadata." + k, Detail: fmt.Sprintf("keys must be 1 to %d printable characters", maxMetadataKeyLen)})
		}
		// NUL: PostgreSQL's jsonb cannot hold \u0000, and a value the ledger
		// refuses must be the client's 422, not a 503 to retry for ever.
		if len(v) > maxMetadataValLen || !utf8.ValidString(v) || strings.IndexByte(v, 0) >= 0 {
			out = append(out, FieldProblem{Field: "metadata." + k, Detail: fmt.Sprintf("values must be valid UTF-8 without NUL, of at most %d bytes", maxMetadataValLen)})
		}
	}
	return out
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func humanDuration(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	}
	return d.String()
}

// allowedSender answers intake's open-relay rule (intake.CheckSenders)
// with a 403 naming the field: from, or raw and the header in it.
func allowedSender(key store.APIKey, msg *mail.Message, raw bool) *problem {
	var se *intake.SenderError
	if !errors.As(intake.CheckSenders(key.Domains, msg), &se) {
		return nil
	}
	bad := make([]FieldProblem, len(se.Refused))
	for i, r := range se.Refused {
		bad[i] = FieldProblem{Field: "from", Detail: fmt.Sprintf("this key may not send from %s", r.Domain)}
		if raw {
			bad[i] = FieldProblem{Field: "raw", Detail: fmt.Sprintf("this key may not send from %s (%s)", r.Domain, r.Where)}
		}
	}
	return newProblem(kindForbidden, fmt.Sprintf("this key may send from %s only", strings.Join(key.Domains, ", ")), bad...)
}

func (s *server) unavailable(w http.ResponseWriter, r *http.Request, err error) {
	// The ledger refused this message's own data: the client's to fix, as
	// a 422; a 503 would have it retry the same message for ever.
	var refused *intake.RefusedError
	if errors.As(err, &refused) {
		writeProblem(w, newProblem(kindInvalid, "the message cannot be stored: "+refused.Reason()+"; nothing was accepted",
			FieldProblem{Field: "message", Detail: refused.Reason()}))
		return
	}
	if !errors.Is(err, intake.ErrUnavailable) {
		s.internal(w, r, err)
		return
	}
	p := newProblem(kindUnavailable, "the queue or the ledger is unavailable; nothing was accepted, try again")
	p.retryAfter = 5 * time.Second
	writeProblem(w, p)
}

func (s *server) internal(w http.ResponseWriter, r *http.Request, err error) {
	s.opts.Logger.LogAttrs(r.Context(), slog.LevelError, "request failed", slog.String("route", r.URL.Path), slog.Any("error", err))
	writeProblem(w, newProblem(kindInternal, "the server failed; the error was logged"))
}

// readProblem is the answer to a request body that could not be read
// whole: over limit, over the in-flight budget, or cut off.
func readProblem(err error, limit int64) *problem {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return tooLarge(-1, limit)
	case errors.Is(err, budget.ErrFull):
		return busy()
	default:
		return newProblem(kindMalformed, "could not read the request body")
	}
}
