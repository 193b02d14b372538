package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/shaping"
)

// TestShapingShow: `mailferry shaping show` prints the built-in entries
// with the file's over them, the rules, and the live state a worker put
// in Redis; --domain resolves the domain to its destination and entry.
func TestShapingShow(t *testing.T) {
	c := newCLI(t)
	name := "relay-" + testenv.KeyPrefix(t) // the tests share one Redis
	file := filepath.Join(t.TempDir(), "shaping.yaml")
	body := "destinations:\n  - {name: " + name + ", destinations: [mx:mx.example.net], max_message_rate: 120/min, max_connections: 3}\n"
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	dns := testmx.StartDNS(t)
	dns.MX("example.net", 10, "mx.example.net")
	dns.A("mx.example.net", "127.0.0.2")
	c.env = append(c.env, "MAILFERRY_SHAPING_FILE="+file, "MAILFERRY_DNS_SERVER="+dns.Addr(), "MAILFERRY_ALLOW_PRIVATE_DESTINATIONS=true")

	// A worker saw a 421 4.7.0 "try again later": the generic rule halved
	// the entry's rate.
	ro, _ := redis.ParseURL(c.getenv("MAILFERRY_REDIS_URL"))
	rdb := redis.NewClient(ro)
	defer rdb.Close()
	cfg, err := shaping.Load([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	sh, err := shaping.New(shaping.Options{Config: cfg, Redis: rdb})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := sh.Observe(t.Context(), "mx:mx.example.net", []shaping.Reply{{Code: 421, Enhanced: "4.7.0", Text: "Try again later, closing connection"}}); r == nil || err != nil {
		t.Fatalf("Observe: %v %v", r, err)
	}

	out, stderr, err := c.run("shaping", "show")
	if err != nil {
		t.Fatalf("shaping show: %v %s", err, stderr)
	}
	for _, want := range []string{name, "120/min", "1/s", "throttled ×0.5", "gmail", ".google.com", "3000/min", "try-again-later", "yahoo-complaints", "suspend", "default"} {
		if !strings.Contains(out, want) {
			t.Errorf("shaping show lacks %q:\n%s", want, out)
		}
	}
	out, stderr, err = c.run("shaping", "show", "--domain", "example.net")
	if err != nil {
		t.Fatalf("shaping show --domain: %v %s", err, stderr)
	}
	if !strings.Contains(out, "example.net → destination mx:mx.example.net → entry "+name) || !strings.Contains(out, " 1/s ") || !strings.Contains(out, "throttled ×0.5") {
		t.Errorf("shaping show --domain:\n%s", out)
	}
}
