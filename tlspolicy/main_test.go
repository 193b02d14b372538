package tlspolicy

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/mailferry/mailferry/internal/leakcheck"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
)

// testCA is the CA the tests' policy servers and MX hosts get their
// certificates from. Go reads the system trust store once per process, so
// SSL_CERT_FILE names it before any test runs: Mailferry trusts it exactly
// as it trusts a public CA, with no test seam.
var testCA *testmx.CA

func TestMain(m *testing.M) {
	os.Exit(leakcheck.Run(os.Stderr, func() int {
		dir, err := os.MkdirTemp("", "tlspolicy-ca-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		path := filepath.Join(dir, "ca.pem")
		if testCA, err = testmx.NewCAFile(path); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		os.Setenv("SSL_CERT_FILE", path)
		os.Unsetenv("SSL_CERT_DIR")
		return testenv.Run(m)
	}))
}
