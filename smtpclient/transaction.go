package smtpclient

import (
	"errors"
	"fmt"
	"io"
)

// deliver runs as many transactions as env's recipients need on this
// session. It returns the results once the host has taken responsibility
// for an answer (the first MAIL accepted, a 5xx to it, or a check that
// rules the host out for this message), or an error that sends us to the
// next host.
//
// Recipients go in transactions of at most 100, or fewer if the server
// says so with LIMITS RCPTMAX (RFC 9422 4.2). Those a server refuses with
// "too many recipients" (452, or 552 on RCPT: RFC 5321 4.5.3.1.10) go in
// the next transaction on the same connection, at once — as long as the
// transaction accepted someone; if it accepted no one they stay deferred,
// so a server that takes nobody cannot make us loop.
func (s *session) deliver(env *prepared) ([]Result, int, error) {
	n := len(env.to)
	all := func(r Result) []Result {
		rs := make([]Result, n)
		for i := range rs {
			rs[i] = r
		}
		return rs
	}
	switch {
	case env.needsUTF8 && !s.ext.utf8:
		// RFC 6531 3.2: without SMTPUTF8 the message must not be sent.
		return all(localResult(enhNoUTF8, errors.New("message needs SMTPUTF8 (RFC 6531), server does not offer it"))), 0, nil
	case env.needs8Bit && !s.ext.eightBit:
		// RFC 6152 3: 8-bit data must not go to a server that has not
		// offered 8BITMIME. We do not downgrade to 7 bits; the sender is told.
		return all(localResult(enhNo8Bit, errors.New("message has 8-bit content, server does not offer 8BITMIME (RFC 6152 3)"))), 0, nil
	case s.ext.size > 0 && env.size > s.ext.size:
		// RFC 1870 6: a message over the declared SIZE would be refused;
		// spare both sides the transfer.
		return all(localResult(enhTooBig, fmt.Errorf("message of %d bytes exceeds the server's SIZE %d (RFC 1870)", env.size, s.ext.size))), 0, nil
	}
	limit := maxRcptsPerTx
	if s.ext.rcptMax > 0 && s.ext.rcptMax < limit {
		limit = s.ext.rcptMax
	}
	res := make([]Result, n)
	pending := make([]int, n)
	for i := range pending {
		pending[i] = i
	}
	txs := 0
	for len(pending) > 0 {
		batch := pending[:min(limit, len(pending))]
		rest := pending[len(batch):]
		tx := s.transaction(env, batch, res)
		if tx.next != nil {
			if txs == 0 {
				return nil, 0, tx.next
			}
			// A later transaction could not start: this host has decided
			// the earlier recipients; these wait for the next attempt.
			fill(res, pending, failureResult(tx.next))
			return res, txs, nil
		}
		txs++
		s.used++
		switch {
		case s.broken && len(rest)+len(tx.carry) > 0:
			r := failureResult(fmt.Errorf("connection lost after %d transactions", txs))
			if tx.err != nil {
				r = failureResult(tx.err)
			}
			fill(res, append(tx.carry, rest...), r)
			return res, txs, nil
		case tx.accepted == 0 && len(tx.carry) > 0:
			// No progress: the server takes no more recipients now.
			fill(res, rest, res[tx.carry[0]])
			return res, txs, nil
		}
		pending = append(tx.carry, rest...)
	}
	return res, txs, nil
}

func fill(res []Result, idx []int, r Result) {
	for _, i := range idx {
		res[i] = r
	}
}

// txResult is what one transaction did.
type txResult struct {
	accepted int   // recipients RCPT accepted
	carry    []int // recipients refused as too many, to send again
	// next: the transaction did not begin (MAIL not accepted with a 4xx,
	// or no reply), so the recipients are not this host's to decide.
	next error
	err  error // what broke the connection, if it broke
}

// transaction runs MAIL, RCPT and DATA for the recipients idx (indexes into
// env.to) and fills their results.
//
// With PIPELINING (RFC 2920) the commands MAIL, RCPT… and DATA go in one
// write and their replies are read in order; the data follows only after
// 354. Without it each command waits for its reply.
func (s *session) transaction(env *prepared, idx []int, res []Result) (tx txResult) {
	body, err := env.body()
	if err != nil {
		// Nothing sent yet: the message itself is not readable here.
		fill(res, idx, localResult(enhLocal, fmt.Errorf("read message: %w", err)))
		return txResult{}
	}
	pipe := s.ext.pipelining
	rset := s.open
	mail := "MAIL FROM:<" + env.from + ">"
	if env.needs8Bit && s.ext.eightBit {
		mail += " BODY=8BITMIME" // RFC 6152 2
	}
	if env.needsUTF8 {
		mail += " SMTPUTF8" // RFC 6531 3.4
	}
	if s.ext.sizeOffered {
		mail += fmt.Sprintf(" SIZE=%d", env.size) // RFC 1870 3
	}
	if env.tls != nil && env.tls.RequireTLS {
		mail += " REQUIRETLS" // RFC 8689 3, passed on; checkPolicy saw it offered
	}

	// Send what can go before the first reply.
	if rset {
		s.send("RSET")
		if !pipe {
			if err := s.rsetReply(s.flush(s.c.t.Hello)); err != nil {
				return txResult{next: err}
			}
			s.open = false
		}
	}
	s.send(mail)
	if pipe {
		for _, i := range idx {
			s.send("RCPT TO:<" + env.to[i] + ">")
		}
		s.send("DATA")
	}
	if err := s.flush(s.c.t.Mail); err != nil {
		return txResult{next: fmt.Errorf("%s: %w", stageMail, err)}
	}
	if rset && pipe {
		if err := s.rsetReply(nil); err != nil {
			return txResult{next: err}
		}
		s.open = false
	}

	// MAIL.
	rep, err := s.read(s.c.t.Mail)
	if err != nil {
		return txResult{next: fmt.Errorf("%s: %w", stageMail, err)}
	}
	if rep.Code/100 != 2 {
		if pipe && !s.broken {
			// RFC 2920 3.1: the RCPTs and DATA get replies of their own
			// (503 after a refused MAIL); read them to stay in step, and
			// end a DATA a confused server took (RFC 2920 3.1: send ".").
			if s.drain(len(idx), s.c.t.Rcpt) {
				s.endEmptyData()
			}
		}
		if rep.Code/100 == 5 {
			fill(res, idx, replyResult(rep.err(), stageMail))
			return txResult{}
		}
		return txResult{next: fmt.Errorf("%s: %w", stageMail, rep.err())}
	}
	s.open = true

	// RCPT.
	var accepted []int
	for k, i := range idx {
		if !pipe {
			s.send("RCPT TO:<" + env.to[i] + ">")
			if err := s.flush(s.c.t.Rcpt); err != nil {
				return s.abandon(res, idx[k:], accepted, fmt.Errorf("%s: %w", stageRcpt, err))
			}
		}
		rep, err := s.read(s.c.t.Rcpt)
		if err != nil {
			return s.abandon(res, idx[k:], accepted, fmt.Errorf("%s: %w", stageRcpt, err))
		}
		r := replyResult(rep.err(), stageRcpt)
		res[i] = r
		switch {
		case r.Err == nil:
			accepted = append(accepted, i)
		case rep.Code == codeClosing:
			return s.abandon(res, idx[k+1:], accepted, r.Err)
		case tooManyRcpts(rep.Code, stageRcpt):
			tx.carry = append(tx.carry, i)
		}
	}
	tx.accepted = len(accepted)
	if tx.accepted == 0 {
		tx.carry = nil // no progress: they stay deferred (see deliver)
		if pipe {
			s.endEmptyData()
		}
		return tx // nobody to send to: no DATA, and the next MAIL needs RSET
	}
	final := func(r Result) txResult {
		fill(res, accepted, r)
		if s.broken {
			tx.err = r.Err
		}
		return tx
	}

	// DATA.
	if !pipe {
		s.send("DATA")
		if err := s.flush(s.c.t.DataInit); err != nil {
			return final(failureResult(fmt.Errorf("%s: %w", stageData, err)))
		}
	}
	rep, err = s.read(s.c.t.DataInit)
	if err != nil {
		return final(failureResult(fmt.Errorf("%s: %w", stageData, err)))
	}
	if rep.Code != codeStartData {
		return final(replyResult(rep.err(), stageData))
	}
	s.writeTimeout = s.c.t.DataBlock
	d := &dataWriter{w: s.w, stuff: true}
	if _, err := io.Copy(d, body); err != nil {
		s.broken = true // the data is cut short: the server must not take it
		return final(failureResult(fmt.Errorf("sending message data: %w", err)))
	}
	d.Close()
	if err := s.flush(s.c.t.DataBlock); err != nil {
		return final(failureResult(fmt.Errorf("sending message data: %w", err)))
	}
	s.open = false
	rep, err = s.read(s.c.t.DataEnd)
	if err != nil {
		return final(failureResult(fmt.Errorf("%s: %w", stageEnd, err)))
	}
	// RFC 5321 4.1.1.4: the reply to the final "." is for every recipient
	// RCPT accepted.
	return final(replyResult(rep.err(), stageEnd))
}

// rsetReply reads the reply to RSET (RFC 5321 4.1.1.5); flushErr is the
// error of sending it, when it went alone. Anything but 250 leaves us out
// of step with the server.
func (s *session) rsetReply(flushErr error) error {
	if flushErr != nil {
		return fmt.Errorf("RSET: %w", flushErr)
	}
	rep, err := s.read(s.c.t.Hello)
	if err != nil {
		return fmt.Errorf("RSET: %w", err)
	}
	if rep.Code/100 != 2 {
		s.broken = true
		return fmt.Errorf("RSET: %w", rep.err())
	}
	return nil
}

// endEmptyData reads the reply to a pipelined DATA whose transaction has no
// recipient. A server should refuse it (RFC 2920 3.1 "no valid
// recipients"); one that says 354 gets a lone "." at once, so it ends the
// data with nothing in it and delivers nothing to nobody.
func (s *session) endEmptyData() {
	rep, err := s.read(s.c.t.DataInit)
	if err != nil || rep.Code != codeStartData {
		return
	}
	s.send(".")
	if s.flush(s.c.t.DataBlock) == nil {
		s.read(s.c.t.DataEnd)
	}
	s.open = false
}

// abandon ends a transaction the connection can no longer carry: the
// recipients in rest, and those already accepted, are deferred.
func (s *session) abandon(res []Result, rest, accepted []int, err error) txResult {
	s.broken = true
	r := failureResult(err)
	fill(res, rest, r)
	fill(res, accepted, r)
	return txResult{accepted: len(accepted), err: err}
}
