package testmx

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"testing"
	"time"
)

// CA is a throwaway certificate authority: put Pool in the client's RootCAs
// and certificates it issues verify; leave it out and they do not.
type CA struct {
	Pool *x509.CertPool
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewCA creates a CA for one test.
func NewCA(t testing.TB) *CA {
	t.Helper()
	ca, err := NewCAFile("")
	if err != nil {
		t.Fatalf("testmx: %v", err)
	}
	return ca
}

// PEM is the CA certificate, PEM-encoded: the contents of an SSL_CERT_FILE
// that makes the CA part of the system trust store.
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// NewCAFile creates a CA outside any test (for a TestMain) and, when path
// is not "", writes its certificate there in PEM: set SSL_CERT_FILE to path
// before anything reads the system roots, which Go loads once per process.
func NewCAFile(path string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "testmx CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	ca := &CA{Pool: pool, cert: cert, key: key}
	if path != "" {
		if err := os.WriteFile(path, ca.PEM(), 0o600); err != nil {
			return nil, fmt.Errorf("write CA: %w", err)
		}
	}
	return ca, nil
}

// Issue returns a server certificate signed by the CA for names (DNS names
// or IP addresses).
func (ca *CA) Issue(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	return issue(t, names, ca.cert, ca.key)
}

// SelfSigned returns a certificate for names that no CA vouches for, like
// the snake-oil certificates many MX hosts present.
func SelfSigned(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	return issue(t, names, nil, nil)
}

func issue(t testing.TB, names []string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) tls.Certificate {
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: "testmx server"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatalf("testmx: create certificate: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testmx: generate key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("testmx: serial: %v", err)
	}
	return n
}

// Cert is the CA's own certificate (a DANE-TA trust anchor, say).
func (ca *CA) Cert() *x509.Certificate { return ca.cert }
