package redisconn

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestOpen(t *testing.T) {
	tests := []struct {
		name, mode, url string
		wantErr         string
		check           func(t *testing.T, c redis.UniversalClient)
	}{
		{name: "single", mode: Single, url: "redis://127.0.0.1:6379/2", check: func(t *testing.T, c redis.UniversalClient) {
			o := c.(*redis.Client).Options()
			if o.Addr != "127.0.0.1:6379" || o.DB != 2 {
				t.Errorf("addr %s db %d", o.Addr, o.DB)
			}
		}},
		{name: "empty mode is single", mode: "", url: "redis://127.0.0.1:6379/0", check: func(t *testing.T, c redis.UniversalClient) {
			if _, ok := c.(*redis.Client); !ok {
				t.Errorf("client %T", c)
			}
		}},
		{name: "cluster seeds", mode: Cluster, url: "redis://127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002", check: func(t *testing.T, c redis.UniversalClient) {
			o := c.(*redis.ClusterClient).Options()
			if strings.Join(o.Addrs, ",") != "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002" {
				t.Errorf("seeds %v", o.Addrs)
			}
			if o.ReadOnly || o.RouteByLatency || o.RouteRandomly {
				t.Errorf("reads may go to replicas: %+v", o)
			}
			if o.ClusterStateReloadInterval != time.Second {
				t.Errorf("slot map reloaded every %v, want 1s", o.ClusterStateReloadInterval)
			}
		}},
		{name: "retries", mode: Cluster, url: "redis://127.0.0.1:7000", check: func(t *testing.T, c redis.UniversalClient) {
			if c.(*redis.ClusterClient).Options().MaxRetries != -1 {
				t.Errorf("MaxRetries not passed on")
			}
		}},
		{name: "unknown mode", mode: "sentinel", url: "redis://127.0.0.1:6379", wantErr: "redis mode"},
		{name: "bad url", mode: Single, url: "http://x", wantErr: "redis url"},
		{name: "bad cluster url", mode: Cluster, url: "http://x", wantErr: "redis cluster url"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := Options{}
			if tc.name == "retries" {
				opts.MaxRetries = -1
			}
			c, err := Open(tc.mode, tc.url, opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Open = %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tc.check(t, c)
		})
	}
}
