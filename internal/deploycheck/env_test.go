package deploycheck

import (
	"regexp"
	"strings"
	"testing"

	"github.com/mailferry/mailferry/config"
)

// loadConfig runs the binary's own configuration parser over env.
func loadConfig(env map[string]string) (config.Config, error) {
	return config.Load(func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	})
}

var envVarRE = regexp.MustCompile(`MAILFERRY_[A-Z0-9_]*[A-Z0-9]`)

// checkEnvNames reports every MAILFERRY_ name in text that config.Vars
// does not list, with its line. Comments count: documentation that names
// a variable the binary ignores misleads as much as a setting does.
func checkEnvNames(file, text string) []string {
	known := map[string]bool{}
	for _, v := range config.Vars() {
		known[v.Name] = true
	}
	var ps problems
	for i, line := range strings.Split(text, "\n") {
		for _, name := range envVarRE.FindAllString(line, -1) {
			if !known[name] {
				ps.add("%s:%d: %s is not a variable the binary reads (config.Vars in config/config.go)", file, i+1, name)
			}
		}
	}
	return ps
}

// TestEnvironmentNames: every MAILFERRY_ variable named in the Dockerfile,
// docker-compose.yml and anything under deploy/ is one config.Load reads.
func TestEnvironmentNames(t *testing.T) {
	root := repoRoot(t)
	files := append([]string{"Dockerfile", "docker-compose.yml"}, deployFiles(t, root)...)
	seen := 0
	for _, f := range files {
		text := string(readRepoFile(t, root, f))
		seen += len(envVarRE.FindAllString(text, -1))
		report(t, checkEnvNames(f, text))
	}
	if seen == 0 {
		t.Fatal("no MAILFERRY_ variable found in any deployment file: the scan is broken")
	}
}
