package relay

import (
	"context"
	"time"

	"github.com/mailferry/mailferry/shaping"
)

// Shaper is the destinations' traffic shaping (MAILFERRY_SHAPING_FILE);
// *shaping.Shaper is the one in use.
type Shaper interface {
	// MaxConnections is dest's connection cap; 0: the worker's own.
	MaxConnections(dest string) int
	// Admit says how many of n transactions to dest may start now, and
	// when to ask again for the rest.
	Admit(ctx context.Context, dest string, n int) (int, time.Duration, error)
	// Paced: every transaction to dest must be admitted, so a released
	// slot is not handed straight on.
	Paced(ctx context.Context, dest string) bool
	// Observe applies the automation rules to a transaction's replies.
	Observe(ctx context.Context, dest string, replies []shaping.Reply) (*shaping.Rule, error)
}

var _ Shaper = (*shaping.Shaper)(nil)

// replies are an attempt's replies as the rules see them.
func replies(a *Attempt) []shaping.Reply {
	out := make([]shaping.Reply, 0, len(a.Results))
	for _, r := range a.Results {
		if r.Code != 0 {
			out = append(out, shaping.Reply{Code: r.Code, Enhanced: r.Enhanced, Text: r.Line})
		}
	}
	return out
}
