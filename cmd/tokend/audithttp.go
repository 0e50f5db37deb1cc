package main

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"

	"github.com/tokend/tokend/api"
)

// auditSecurity builds the audit listener's TLS configuration and the
// guard that admits its callers, from the --audit-* flags.
func auditSecurity(c AuditHTTPConfig, log *slog.Logger) (*api.AuditGuard, *tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("--audit-tls-cert/--audit-tls-key: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if c.ClientCA != "" {
		pem, err := os.ReadFile(c.ClientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("--audit-client-ca: %w", err)
		}
		tc.ClientCAs = x509.NewCertPool()
		if !tc.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("--audit-client-ca %s: no PEM certificate in it", c.ClientCA)
		}
		// With bearer tokens as the alternative, a certificate is optional;
		// one that is presented must still verify.
		tc.ClientAuth = tls.RequireAndVerifyClientCert
		if c.TokensFile != "" {
			tc.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	var tokens map[[sha256.Size]byte]string
	if c.TokensFile != "" {
		f, err := os.Open(c.TokensFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--audit-tokens: %w", err)
		}
		defer f.Close()
		if tokens, err = api.ReadAuditTokens(f); err != nil {
			return nil, nil, fmt.Errorf("--audit-tokens %s: %w", c.TokensFile, err)
		}
	}
	return api.NewAuditGuard(tokens, c.MaxConcurrent, log), tc, nil
}
