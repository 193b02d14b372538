package submission

import (
	"context"
	"log/slog"

	"github.com/emersion/go-smtp"

	"github.com/mailferry/mailferry/store"
)

// rateLimit spends one token of key's budget (MAILFERRY_RATE_LIMIT),
// shared with the HTTP API, for the transaction MAIL opens. It asks at
// MAIL rather than at the end of DATA so that a refused client has sent
// no message. A limiter that cannot answer lets the message through: it
// must not stop the mail it protects.
func (s *session) rateLimit(key *store.APIKey) error {
	if s.srv.opts.Limiter == nil {
		return s.quota(key)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.opts.OpTimeout)
	defer cancel()
	res, err := s.srv.opts.Limiter.Allow(ctx, key.ID)
	switch {
	case err != nil:
		s.log(key).LogAttrs(ctx, slog.LevelWarn, "rate limiter unavailable; message let through", slog.Any("error", err))
		return s.quota(key)
	case res.Allowed:
		return s.quota(key)
	}
	s.srv.opts.Metrics.refused(refusedRateLimited)
	return errRateLimited(res.RetrySeconds(), res.Limit.Rate, res.Limit.Burst)
}

// quota counts the transaction against the tenant's daily quota.
func (s *session) quota(key *store.APIKey) error {
	if s.srv.opts.Quota == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.opts.OpTimeout)
	defer cancel()
	res, err := s.srv.opts.Quota.Take(ctx, key.TenantID, 1)
	switch {
	case err != nil:
		s.log(key).LogAttrs(ctx, slog.LevelWarn, "tenant quota unavailable; message let through", slog.Any("error", err))
		return nil
	case res.Allowed:
		return nil
	}
	s.srv.opts.Metrics.refused(refusedRateLimited)
	return reply(codeLocalError, smtp.EnhancedCode{4, 7, 0},
		"daily quota of %d messages spent for this tenant; try again after midnight UTC, in %ds", res.PerDay, res.RetrySeconds())
}
