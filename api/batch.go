package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/store"
)

// DefaultMaxBatch is the most messages a POST /v1/messages/batch may hold
// unless Options.MaxBatch says otherwise (MAILFERRY_MAX_BATCH).
const DefaultMaxBatch = 100

// batchResult is one item of a batch's answer: the 202 body the message
// would have had alone, or its problem.
type batchResult struct {
	Status  int           `json:"status"`
	Body    *sendResponse `json:"body,omitempty"`
	Problem *problem      `json:"problem,omitempty"`
}

type batchResponse struct {
	Data []batchResult `json:"data"`
}

// sendBatch is POST /v1/messages/batch {"messages":[…]}: each item is what
// POST /v1/messages takes, checked alone; those that pass are accepted
// together, in one ledger transaction and one Redis round trip. The answer
// is 207 with one result per item, in order, so that one bad item refuses
// no other: Multi-Status as RFC 4918 11.1 names it, with a JSON body. An Idempotency-Key covers the whole batch.
func (s *server) sendBatch(w http.ResponseWriter, r *http.Request) {
	key := principal(r.Context())
	if p := checkContentType(r); p != nil {
		writeProblem(w, p)
		return
	}
	limit := int64(s.opts.MaxBatch) * s.maxRequestBytes()
	if c := s.opts.Budget.Capacity(); c > 0 {
		// A batch larger than the whole in-flight budget could never be
		// held: refuse it as too large, not as busy for ever.
		limit = min(limit, c)
	}
	buf, res, ok := s.readBody(w, r, limit)
	if !ok {
		return
	}
	defer res.Release()
	defer s.putBodyBuffer(buf)
	sum := sha256.Sum256(buf.Bytes())
	idemKey, p := idempotencyKey(r.Header)
	if p != nil {
		writeProblem(w, p)
		return
	}
	items, p := decodeBatch(buf.Bytes(), s.opts.MaxBatch)
	if p != nil {
		writeProblem(w, p)
		return
	}

	out := batchResponse{Data: make([]batchResult, len(items))}
	var (
		receipts []intake.Receipt
		subs     []intake.Submission
		at       []int // out index of each receipt
	)
	for i, raw := range items {
		sub, resp, p := s.batchItem(r.Context(), key, raw)
		if p != nil {
			out.Data[i] = batchResult{Status: p.Status, Problem: itemProblem(p, i)}
			continue
		}
		receipt, err := s.opts.Intake.NewReceipt(sub)
		if err != nil {
			s.internal(w, r, err)
			return
		}
		resp.ID, resp.MessageID = receipt.ID.String(), receipt.MessageID
		out.Data[i] = batchResult{Status: http.StatusAccepted, Body: resp}
		receipts, subs, at = append(receipts, receipt), append(subs, sub), append(at, i)
	}
	// The daily quota counts messages, not requests: the batch's valid
	// ones all fit, or none is accepted.
	if s.takeQuota(w, r, key.TenantID, len(subs)) {
		return
	}
	suppress := func(sup [][]intake.Suppression) {
		for j, i := range at {
			b := out.Data[i].Body.suppress(sup[j])
			out.Data[i].Body = &b
		}
	}

	if idemKey == "" {
		sup, errs := s.opts.Intake.AcceptAll(r.Context(), receipts, subs)
		for j, i := range at {
			if errs[j] != nil {
				p := s.acceptProblem(r, errs[j])
				out.Data[i] = batchResult{Status: p.Status, Problem: itemProblem(p, i)}
				continue
			}
			b := out.Data[i].Body.suppress(sup[j])
			out.Data[i].Body = &b
		}
		writeJSON(w, http.StatusMultiStatus, out)
		return
	}
	var encoded []byte
	existing, err := s.opts.Intake.SubmitAllIdempotent(r.Context(), receipts, subs, store.Idempotency{
		TenantID: key.TenantID, Key: idemKey, RequestHash: sum[:], Status: http.StatusMultiStatus,
	}, func(sup [][]intake.Suppression) ([]byte, error) {
		suppress(sup)
		b, merr := json.Marshal(out)
		encoded = b
		return b, merr
	})
	if err != nil {
		s.unavailable(w, r, err)
		return
	}
	writeIdempotent(w, http.StatusMultiStatus, encoded, existing, sum[:])
}

// decodeBatch reads {"messages":[…]} into its items, undecoded: each is
// checked alone (batchItem), so one bad item refuses no other. The body
// itself must be one object with that one field, holding 1 to max items.
func decodeBatch(body []byte, max int) ([]json.RawMessage, *problem) {
	var req struct {
		Messages []json.RawMessage `json:"messages"`
	}
	if sc := scanJSON(body, maxJSONDepth+2); sc.tooDeep {
		return nil, newProblem(kindMalformed, fmt.Sprintf("JSON nested deeper than %d levels", maxJSONDepth+2))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, malformedJSON(err)
	}
	if dec.More() {
		return nil, newProblem(kindMalformed, "the body holds more than one JSON value")
	}
	switch {
	case len(req.Messages) == 0:
		return nil, invalid([]FieldProblem{{Field: "messages", Detail: "required: at least one message"}})
	case len(req.Messages) > max:
		return nil, newProblem(kindTooMany, fmt.Sprintf("a batch holds at most %d messages; this one has %d", max, len(req.Messages)),
			FieldProblem{Field: "messages", Detail: fmt.Sprintf("at most %d", max)})
	}
	return req.Messages, nil
}

// batchItem checks one message of a batch as POST /v1/messages would.
func (s *server) batchItem(ctx context.Context, key store.APIKey, raw []byte) (intake.Submission, *sendResponse, *problem) {
	req, p := s.decodeSend(raw)
	if p != nil {
		return intake.Submission{}, nil, p
	}
	msg, p := s.build(req)
	if p != nil {
		return intake.Submission{}, nil, p
	}
	if p := allowedSender(key, msg, req.Raw.set); p != nil {
		return intake.Submission{}, nil, p
	}
	sub := intake.Submission{
		TenantID: key.TenantID, APIKeyID: key.ID, Ingress: "api", Message: msg,
		Tags: req.Tags, Metadata: req.Metadata, RequireTLS: req.RequireTLS,
	}
	if req.SendAt != nil {
		sub.SendAt = req.SendAt.UTC()
	}
	resp := &sendResponse{Warnings: []string{}, Recipients: make([]recipientReceipt, 0, len(msg.Recipients))}
	for _, rc := range msg.Recipients {
		resp.Recipients = append(resp.Recipients, recipientReceipt{Email: rc, Status: store.RecipientQueued})
	}
	if s.opts.Warn != nil && len(msg.From) > 0 {
		resp.Warnings = append(resp.Warnings, s.opts.Warn(ctx, msg.From[0].Domain())...)
	}
	return sub, resp, nil
}

// itemProblem prefixes the problem's fields with the item's place, so
// that "from" reads "messages[3].from".
func itemProblem(p *problem, i int) *problem {
	q := *p
	q.Errors = make([]FieldProblem, len(p.Errors))
	for j, f := range p.Errors {
		q.Errors[j] = FieldProblem{Field: fmt.Sprintf("messages[%d].%s", i, f.Field), Detail: f.Detail}
	}
	if len(q.Errors) == 0 {
		q.Errors = nil
	}
	return &q
}

// acceptProblem is the problem the intake's error makes for one message,
// as s.unavailable writes it for one.
func (s *server) acceptProblem(r *http.Request, err error) *problem {
	var refused *intake.RefusedError
	switch {
	case errors.As(err, &refused):
		return newProblem(kindInvalid, "the message cannot be stored: "+refused.Reason()+"; it was not accepted",
			FieldProblem{Field: "message", Detail: refused.Reason()})
	case errors.Is(err, intake.ErrUnavailable):
		return newProblem(kindUnavailable, "the queue or the ledger is unavailable; this message was not accepted, try again")
	default:
		s.opts.Logger.ErrorContext(r.Context(), "batch item failed", "error", err)
		return newProblem(kindInternal, "the server failed; the error was logged")
	}
}
