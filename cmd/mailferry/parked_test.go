package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/store"
)

// TestParkedCommand: an operator sees a parked job with its reason in
// `mailferry parked list`, and `parked release` returns it to the queue.
func TestParkedCommand(t *testing.T) {
	c := newCLI(t)
	if _, stderr, err := c.run("migrate"); err != nil {
		t.Fatalf("migrate: %v %s", err, stderr)
	}
	ctx := t.Context()
	st, err := store.Open(ctx, store.Options{URL: c.getenv("MAILFERRY_DATABASE_URL")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	k, _, err := st.CreateAPIKey(ctx, "acme", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.Must(uuid.NewV7())
	if err := st.AcceptBatch(ctx, []store.NewMessage{{ID: id, TenantID: k.TenantID, APIKeyID: k.ID, Ingress: "api",
		MessageID: id.String() + "@test", MailFrom: "a@example.com", From: "a@example.com",
		Body: []byte("Subject: x\r\n\r\nx\r\n"), CreatedAt: time.Now(),
		Recipients: []store.NewRecipient{{Email: "x@poison.example"}}}}); err != nil {
		t.Fatal(err)
	}
	if err := st.ParkJob(ctx, id, "poison.example", "panic: runtime error\nindex out of range"); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := c.run("parked", "list")
	if err != nil {
		t.Fatalf("parked list: %v %s", err, stderr)
	}
	if !strings.Contains(out, id.String()) || !strings.Contains(out, "poison.example") ||
		!strings.Contains(out, "panic: runtime error index out of range") {
		t.Errorf("parked list:\n%s", out)
	}
	if _, stderr, err := c.run("parked", "release", id.String(), "poison.example"); err != nil {
		t.Fatalf("parked release: %v %s", err, stderr)
	}
	if jobs, err := st.ParkedJobs(ctx); err != nil || len(jobs) != 0 {
		t.Errorf("after release: %v %v", jobs, err)
	}
	ro, _ := redis.ParseURL(c.getenv("MAILFERRY_REDIS_URL"))
	rdb := redis.NewClient(ro)
	defer rdb.Close()
	q, err := queue.New(rdb, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	if err := q.Jobs(context.Background(), func(j queue.Job) error {
		found = found || j.MessageID == id.String() && j.Domain == "poison.example"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Errorf("released job not queued")
	}
	if _, stderr, err := c.run("parked", "release", id.String(), "poison.example"); err == nil || !strings.Contains(stderr, "no parked job") {
		t.Errorf("second release: %v %s", err, stderr)
	}
}

func (c *cli) getenv(name string) string {
	for _, kv := range c.env {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	c.t.Fatalf("%s not set", name)
	return ""
}
