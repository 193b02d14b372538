package submission

import (
	"context"
	"log/slog"

	"github.com/mailferry/mailferry/store"
)

// rateLimit spends one token of key's budget (MAILFERRY_RATE_LIMIT),
// shared with the HTTP API, for the transaction MAIL opens. It asks at
// MAIL rather than at the end of DATA so that a refused client has sent
// no message. A limiter that cannot answer lets the message through: it
// must not stop the mail it protects.
func (s *session) rateLimit(key *store.APIKey) error {
	if s.srv.opts.Limiter == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.opts.OpTimeout)
	defer cancel()
	res, err := s.srv.opts.Limiter.Allow(ctx, key.ID)
	switch {
	case err != nil:
		s.log(key).LogAttrs(ctx, slog.LevelWarn, "rate limiter unavailable; message let through", slog.Any("error", err))
		return nil
	case res.Allowed:
		return nil
	}
	s.srv.opts.Metrics.refused(refusedRateLimited)
	return errRateLimited(res.RetrySeconds(), res.Limit.Rate, res.Limit.Burst)
}
