package config

import (
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLoadDefaults(t *testing.T) {
	c, err := Load(env(map[string]string{"MAILFERRY_HOSTNAME": "mx.example.com"}))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.HTTPAddr != ":8080" || c.SMTPPort != 25 || c.MaxMessageBytes != 26214400 || c.MaxRecipients != 1000 {
		t.Errorf("defaults: %+v", c)
	}
	if c.RedisURL.String() != "redis://127.0.0.1:6379/0" || c.DatabaseURL.String() != "postgres://127.0.0.1:5432/mailferry" {
		t.Errorf("urls: %v %v", c.RedisURL, c.DatabaseURL)
	}
	want := []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour}
	if len(c.RetrySchedule) != len(want) {
		t.Fatalf("retry schedule %v", c.RetrySchedule)
	}
	for i := range want {
		if c.RetrySchedule[i] != want[i] {
			t.Errorf("retry[%d] = %v, want %v", i, c.RetrySchedule[i], want[i])
		}
	}
	if c.MaxQueueAge != 120*time.Hour || !c.AutoMigrate || c.AllowPrivateDestinations || c.Smarthost != nil {
		t.Errorf("defaults: %+v", c)
	}
	if c.SubmissionAddr != ":587" || c.SubmissionsAddr != ":465" || c.SubmissionMaxPerIP != 10 {
		t.Errorf("submission defaults: %q %q, %d per address", c.SubmissionAddr, c.SubmissionsAddr, c.SubmissionMaxPerIP)
	}
	if c.HTTPMaxConnections != 4096 {
		t.Errorf("HTTP connection cap %d, want 4096", c.HTTPMaxConnections)
	}
	if c.VisibilityTimeout != 30*time.Second || c.ReconcileInterval != 5*time.Minute || c.AttemptRetention != 2160*time.Hour {
		t.Errorf("visibility timeout %v, reconcile interval %v", c.VisibilityTimeout, c.ReconcileInterval)
	}
}

func TestRateLimit(t *testing.T) {
	for value, want := range map[string]int{"": 100, "0": 0, "250": 250} {
		vars := map[string]string{"MAILFERRY_HOSTNAME": "mx.example.com"}
		if value != "" {
			vars["MAILFERRY_RATE_LIMIT"] = value
		}
		c, err := Load(env(vars))
		if err != nil || c.RateLimit != want {
			t.Errorf("MAILFERRY_RATE_LIMIT=%q: %d, %v; want %d", value, c.RateLimit, err, want)
		}
	}
}

func TestLoadBadValues(t *testing.T) {
	tests := []struct {
		name, variable, value, want string
	}{
		{"port not a number", "MAILFERRY_SMTP_PORT", "twenty-five", "MAILFERRY_SMTP_PORT"},
		{"port out of range", "MAILFERRY_SMTP_PORT", "70000", "outside"},
		{"redis scheme", "MAILFERRY_REDIS_URL", "http://x", "MAILFERRY_REDIS_URL: scheme"},
		{"database scheme", "MAILFERRY_DATABASE_URL", "mysql://x", "MAILFERRY_DATABASE_URL"},
		{"retry item", "MAILFERRY_RETRY_SCHEDULE", "1m,soon", "item 2"},
		{"queue age", "MAILFERRY_MAX_QUEUE_AGE", "-5h", "MAILFERRY_MAX_QUEUE_AGE"},
		{"bool", "MAILFERRY_ALLOW_PRIVATE_DESTINATIONS", "maybe", "MAILFERRY_ALLOW_PRIVATE_DESTINATIONS"},
		{"http addr", "MAILFERRY_HTTP_ADDR", "8080", "MAILFERRY_HTTP_ADDR"},
		{"smarthost scheme", "MAILFERRY_SMARTHOST", "ftp://h:25", "MAILFERRY_SMARTHOST"},
		{"hostname", "MAILFERRY_HOSTNAME", "bad_host!", "MAILFERRY_HOSTNAME"},
		{"short secret", "MAILFERRY_SECRET_KEY", "abc", "MAILFERRY_SECRET_KEY: too short"},
		{"max bytes", "MAILFERRY_MAX_MESSAGE_BYTES", "12", "MAILFERRY_MAX_MESSAGE_BYTES"},
		{"log level", "MAILFERRY_LOG_LEVEL", "loud", "MAILFERRY_LOG_LEVEL"},
		{"cert without key", "MAILFERRY_TLS_CERT", "/tmp/c.pem", "set together"},
		{"visibility timeout too short", "MAILFERRY_VISIBILITY_TIMEOUT", "10ms", "MAILFERRY_VISIBILITY_TIMEOUT: 10ms is shorter than the minimum 1s"},
		{"reconcile interval", "MAILFERRY_RECONCILE_INTERVAL", "often", "MAILFERRY_RECONCILE_INTERVAL"},
		{"rate limit negative", "MAILFERRY_RATE_LIMIT", "-1", "MAILFERRY_RATE_LIMIT: -1 is outside 0..1000000"},
		{"rate limit not a number", "MAILFERRY_RATE_LIMIT", "fast", "MAILFERRY_RATE_LIMIT"},
		{"per-address cap zero", "MAILFERRY_SUBMISSION_MAX_PER_IP", "0", "MAILFERRY_SUBMISSION_MAX_PER_IP: 0 is outside 1..100000"},
		{"per-address cap not a number", "MAILFERRY_SUBMISSION_MAX_PER_IP", "ten", "MAILFERRY_SUBMISSION_MAX_PER_IP"},
		{"http cap too low", "MAILFERRY_HTTP_MAX_CONNECTIONS", "2", "MAILFERRY_HTTP_MAX_CONNECTIONS: 2 is outside 16..10000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(env(map[string]string{"MAILFERRY_HOSTNAME": "mx.example.com", tt.variable: tt.value}))
			if err == nil {
				t.Fatalf("%s=%q accepted", tt.variable, tt.value)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestLoadReportsEveryBadVariable(t *testing.T) {
	_, err := Load(env(map[string]string{
		"MAILFERRY_HOSTNAME":  "mx.example.com",
		"MAILFERRY_SMTP_PORT": "x",
		"MAILFERRY_LOG_LEVEL": "x",
	}))
	if err == nil || !strings.Contains(err.Error(), "MAILFERRY_SMTP_PORT") || !strings.Contains(err.Error(), "MAILFERRY_LOG_LEVEL") {
		t.Fatalf("want both variables named, got %v", err)
	}
}

func TestSecretsNeverInErrors(t *testing.T) {
	_, err := Load(env(map[string]string{
		"MAILFERRY_HOSTNAME":     "mx.example.com",
		"MAILFERRY_DATABASE_URL": "postgres://u:hunter2-secret@h:5432/db\x7f",
		"MAILFERRY_SMARTHOST":    "ftp://u:hunter2-secret@h:25",
		"MAILFERRY_SECRET_KEY":   "hunter2-secret",
	}))
	if err == nil {
		t.Fatal("bad values accepted")
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error leaks a secret: %v", err)
	}
}

func TestEmptyDisablesSubmission(t *testing.T) {
	c, err := Load(env(map[string]string{
		"MAILFERRY_HOSTNAME":         "mx.example.com",
		"MAILFERRY_SUBMISSION_ADDR":  "",
		"MAILFERRY_SUBMISSIONS_ADDR": "",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.SubmissionAddr != "" || c.SubmissionsAddr != "" {
		t.Errorf("want submission off, got %q %q", c.SubmissionAddr, c.SubmissionsAddr)
	}
}

func TestBounceSettings(t *testing.T) {
	const key = "0123456789abcdef0123456789abcdef"
	base := func(kv ...string) map[string]string {
		m := map[string]string{"MAILFERRY_HOSTNAME": "mx.example.com"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	t.Run("defaults", func(t *testing.T) {
		c, err := Load(env(base()))
		if err != nil || c.BounceDomain != "" || c.InboundAddr != ":25" || c.FBLAddress != "" || c.BounceRules != "" {
			t.Fatalf("%q %q %q %q, %v", c.BounceDomain, c.InboundAddr, c.FBLAddress, c.BounceRules, err)
		}
	})
	t.Run("good", func(t *testing.T) {
		c, err := Load(env(base("MAILFERRY_BOUNCE_DOMAIN", "Bounces.Example.com", "MAILFERRY_SECRET_KEY", key,
			"MAILFERRY_FBL_ADDRESS", "FBL@bounces.EXAMPLE.com", "MAILFERRY_INBOUND_ADDR", "")))
		if err != nil {
			t.Fatal(err)
		}
		if c.BounceDomain != "bounces.example.com" || c.FBLAddress != "FBL@bounces.example.com" || c.InboundAddr != "" {
			t.Errorf("%q %q %q", c.BounceDomain, c.FBLAddress, c.InboundAddr)
		}
	})
	for _, tc := range []struct {
		name, want string
		vars       map[string]string
	}{
		{"domain without key", "MAILFERRY_BOUNCE_DOMAIN: needs MAILFERRY_SECRET_KEY", base("MAILFERRY_BOUNCE_DOMAIN", "bounces.example.com")},
		{"bad domain", "MAILFERRY_BOUNCE_DOMAIN:", base("MAILFERRY_BOUNCE_DOMAIN", "bounces_example", "MAILFERRY_SECRET_KEY", key)},
		{"fbl without domain", "MAILFERRY_FBL_ADDRESS: needs MAILFERRY_BOUNCE_DOMAIN", base("MAILFERRY_FBL_ADDRESS", "fbl@example.com")},
		{"fbl elsewhere", "MAILFERRY_FBL_ADDRESS: \"fbl@example.com\" is not at", base("MAILFERRY_BOUNCE_DOMAIN", "bounces.example.com",
			"MAILFERRY_SECRET_KEY", key, "MAILFERRY_FBL_ADDRESS", "fbl@example.com")},
		{"fbl not an address", "MAILFERRY_FBL_ADDRESS:", base("MAILFERRY_BOUNCE_DOMAIN", "bounces.example.com",
			"MAILFERRY_SECRET_KEY", key, "MAILFERRY_FBL_ADDRESS", "fbl")},
		{"inbound addr", "MAILFERRY_INBOUND_ADDR:", base("MAILFERRY_INBOUND_ADDR", "25")},
		{"rules missing", "MAILFERRY_BOUNCE_RULES:", base("MAILFERRY_BOUNCE_RULES", "/nonexistent/rules")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(env(tc.vars))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestWebhookSettings(t *testing.T) {
	c, err := Load(env(map[string]string{"MAILFERRY_HOSTNAME": "mx.example.com"}))
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour}
	if len(c.WebhookRetrySchedule) != len(want) || c.WebhookRetrySchedule[0] != want[0] || c.WebhookRetrySchedule[6] != want[6] {
		t.Errorf("webhook retry schedule %v, want %v", c.WebhookRetrySchedule, want)
	}
	if c.EventRetention != 720*time.Hour {
		t.Errorf("event retention %v, want 720h", c.EventRetention)
	}
	_, err = Load(env(map[string]string{"MAILFERRY_HOSTNAME": "mx.example.com",
		"MAILFERRY_WEBHOOK_RETRY_SCHEDULE": "5s,soon", "MAILFERRY_EVENT_RETENTION": "30m"}))
	for _, name := range []string{"MAILFERRY_WEBHOOK_RETRY_SCHEDULE", "MAILFERRY_EVENT_RETENTION"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("error %v does not name %s", err, name)
		}
	}
}

func TestDomainSettings(t *testing.T) {
	c, err := Load(env(map[string]string{"MAILFERRY_HOSTNAME": "mx.example.com"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.DKIMZone != "" || c.SPFInclude != "" || c.RequireVerifiedDomain || c.DKIMRetireAfter != 168*time.Hour ||
		c.DKIMRotateEvery != 0 || c.DomainCheckInterval != time.Hour {
		t.Errorf("defaults: zone %q include %q require %t retire %v rotate %v check %v", c.DKIMZone, c.SPFInclude,
			c.RequireVerifiedDomain, c.DKIMRetireAfter, c.DKIMRotateEvery, c.DomainCheckInterval)
	}
	c, err = Load(env(map[string]string{"MAILFERRY_HOSTNAME": "mx.example.com", "MAILFERRY_DKIM_ZONE": "DKIM.Relay.example.",
		"MAILFERRY_SPF_INCLUDE": "spf.relay.example", "MAILFERRY_REQUIRE_VERIFIED_DOMAIN": "true",
		"MAILFERRY_DKIM_ROTATE_EVERY": "2160h"}))
	if err != nil || c.DKIMZone != "dkim.relay.example" || !c.RequireVerifiedDomain || c.DKIMRotateEvery != 2160*time.Hour {
		t.Errorf("set: %v, zone %q", err, c.DKIMZone)
	}
	for _, tc := range []struct{ name, value string }{
		{"MAILFERRY_DKIM_ZONE", "not a zone"},
		{"MAILFERRY_SPF_INCLUDE", "localhost"},
		{"MAILFERRY_REQUIRE_VERIFIED_DOMAIN", "yes please"},
		{"MAILFERRY_DKIM_RETIRE_AFTER", "30m"}, // under the 1h floor
		{"MAILFERRY_DKIM_ROTATE_EVERY", "24h"}, // shorter than the retirement
		{"MAILFERRY_DOMAIN_CHECK_INTERVAL", "5s"},
		{"MAILFERRY_DKIM_ZONE_ADDR", "127.0.0.1:5300"}, // without MAILFERRY_DKIM_ZONE
	} {
		_, err := Load(env(map[string]string{"MAILFERRY_HOSTNAME": "mx.example.com", tc.name: tc.value}))
		if err == nil || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s=%s: error %v does not name it", tc.name, tc.value, err)
		}
	}
}
