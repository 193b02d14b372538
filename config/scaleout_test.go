package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestScaleOutSettings(t *testing.T) {
	shaping := filepath.Join(t.TempDir(), "shaping.yaml")
	if err := os.WriteFile(shaping, []byte("default: {max_connections: 4}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(env(nil))
	if err != nil || c.DatabasePooler != "none" || c.DatabaseDirectURL != nil || c.TenantDailyQuota != 0 || c.ShapingFile != "" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	c, err = Load(env(map[string]string{
		"MAILFERRY_DATABASE_POOLER":     "pgbouncer",
		"MAILFERRY_DATABASE_DIRECT_URL": "postgres://u:secret@db:5432/mailferry",
		"MAILFERRY_TENANT_DAILY_QUOTA":  "50000",
		"MAILFERRY_SHAPING_FILE":        shaping,
	}))
	if err != nil || c.DatabasePooler != "pgbouncer" || c.DatabaseDirectURL.Host != "db:5432" || c.TenantDailyQuota != 50000 || c.ShapingFile != shaping {
		t.Fatalf("set: %+v %v", c, err)
	}
	for name, v := range map[string]string{
		"MAILFERRY_DATABASE_POOLER":     "pgpool",
		"MAILFERRY_DATABASE_DIRECT_URL": "mysql://db/x",
		"MAILFERRY_TENANT_DAILY_QUOTA":  "-1",
		"MAILFERRY_SHAPING_FILE":        filepath.Join(t.TempDir(), "missing.yaml"),
	} {
		_, err := Load(env(map[string]string{name: v}))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%s: %v, want an error naming it", name, v, err)
		}
	}
}
