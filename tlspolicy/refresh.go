package tlspolicy

import (
	"context"
	"time"
)

// Refresh fetches again, before they expire, the cached policies last
// checked longer ago than Options.Refresh (or half their max_age), so
// that a domain mailed rarely keeps its policy (RFC 8461 10.2: refresh
// proactively rather than let max_age run out). It returns how many
// policies it checked.
func (c *Client) Refresh(ctx context.Context) (int, error) {
	domains, err := c.opts.Cache.STSPoliciesDue(ctx, c.opts.Now(), c.opts.Refresh, 100)
	if err != nil {
		return 0, err
	}
	for _, d := range domains {
		if _, err := c.stsPolicy(ctx, d); err != nil {
			return 0, err
		}
	}
	return len(domains), nil
}

// RunRefresh calls Refresh every every until ctx ends.
func (c *Client) RunRefresh(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := c.Refresh(ctx); err != nil && ctx.Err() == nil {
			c.opts.Logger.WarnContext(ctx, "MTA-STS policy refresh", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
