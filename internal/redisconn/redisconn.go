// Package redisconn opens the Redis client every role shares, from
// MAILFERRY_REDIS_MODE and MAILFERRY_REDIS_URL: one server, or a Redis
// Cluster reached through its seed nodes. Callers hold a
// redis.UniversalClient and never learn which; the queue keeps every
// multi-key command in one hash tag (queue/doc.go) so both work.
package redisconn

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Modes of MAILFERRY_REDIS_MODE.
const (
	Single  = "single"
	Cluster = "cluster"
)

// stateReload is how often a cluster client refreshes its slot map.
const stateReload = time.Second

// Options tune the client beyond the URL.
type Options struct {
	// MaxRetries as in go-redis: -1 fails at once (tests of an outage).
	MaxRetries int
}

// Open returns a client for mode. In cluster mode rawURL is go-redis's
// cluster URL: redis://host:port?addr=host2:port2&addr=host3:port3, every
// addr a seed; the client learns the rest of the cluster from them.
func Open(mode, rawURL string, opts Options) (redis.UniversalClient, error) {
	switch mode {
	case Single, "":
		o, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis url: %w", err)
		}
		if opts.MaxRetries != 0 {
			o.MaxRetries = opts.MaxRetries
		}
		return redis.NewClient(o), nil
	case Cluster:
		o, err := redis.ParseClusterURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis cluster url: %w", err)
		}
		if opts.MaxRetries != 0 {
			o.MaxRetries = opts.MaxRetries
		}
		// go-redis learns of a failover from MOVED replies only; a killed
		// primary answers nothing, so without a timed reload the client
		// kept dialling it for the default 60s, and the queue's slots on
		// it stalled that long (reliability/cluster_test.go). One CLUSTER
		// SLOTS a second per process is nothing beside the queue's traffic.
		o.ClusterStateReloadInterval = stateReload
		// Reads go to primaries only (ReadOnly false): a replica may lag, and
		// a claim read from one could hand out a job already acknowledged.
		// MOVED and ASK after a failover are followed up to MaxRedirects.
		return redis.NewClusterClient(o), nil
	default:
		return nil, fmt.Errorf("redis mode %q: want %s or %s", mode, Single, Cluster)
	}
}
