package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

// testAuditToken is the bearer token every test instance's audit listener
// accepts (its hash is in the tokens file testAuditHTTP writes).
const testAuditToken = "test-audit-token-0123456789abcdef0123456789abcdef"

// testCA is a certificate authority for a test: it signs the audit
// listener's certificate and client certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func mustCA(tb testing.TB, name string) *testCA {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a certificate for cn signed by the CA: a server
// certificate for 127.0.0.1, or a client certificate.
func (ca *testCA) issue(tb testing.TB, cn string, server bool) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage, tmpl.IPAddresses = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writePEM(tb testing.TB, path, kind string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// testAuditCAs caches one CA per test binary: generating keys is cheap, but
// the client side of every test needs the same pool.
var testAuditCAs = struct {
	sync.Once
	ca *testCA
}{}

// testAuditHTTP configures an audit listener on a free port with a server
// certificate from the test CA, client certificates from that CA and the
// bearer token testAuditToken.
func testAuditHTTP(tb testing.TB) AuditHTTPConfig {
	tb.Helper()
	testAuditCAs.Do(func() { testAuditCAs.ca = mustCA(tb, "tokend test CA") })
	ca, dir := testAuditCAs.ca, tb.TempDir()
	srv := ca.issue(tb, "tokend", true)
	c := AuditHTTPConfig{Addr: "127.0.0.1:0", TLSCert: filepath.Join(dir, "audit.pem"), TLSKey: filepath.Join(dir, "audit-key.pem"),
		ClientCA: filepath.Join(dir, "ca.pem"), TokensFile: filepath.Join(dir, "audit-tokens"), MaxConcurrent: 4}
	writePEM(tb, c.TLSCert, "CERTIFICATE", srv.Certificate[0])
	keyDER, _ := x509.MarshalPKCS8PrivateKey(srv.PrivateKey)
	writePEM(tb, c.TLSKey, "PRIVATE KEY", keyDER)
	if err := os.WriteFile(c.ClientCA, ca.pem, 0o600); err != nil {
		tb.Fatal(err)
	}
	tokens := "# test callers\n" + api.HashAuditToken("tests", testAuditToken) + "\n"
	if err := os.WriteFile(c.TokensFile, []byte(tokens), 0o600); err != nil {
		tb.Fatal(err)
	}
	return c
}

// auditClient returns a client that trusts the test CA, presenting cert
// when given.
func auditClient(cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(testAuditCAs.ca.cert)
	tc := &tls.Config{RootCAs: pool}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
}

// auditGet sends GET path to app's audit listener with the bearer token
// (empty: none) through client.
func auditGet(tb testing.TB, client *http.Client, app *App, path, token string) (int, http.Header, []byte) {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+app.AuditAddr()+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, resp.Header, body
}

// TestAuditListenerAuthenticates: the audit API answers only over TLS and
// only to a caller with a certificate from the configured CA or a listed
// bearer token; metrics and health stay on --http, which no longer serves
// the audit API.
func TestAuditListenerAuthenticates(t *testing.T) {
	logs := &syncBuffer{}
	app := MustApp(t, testConfig(t), logs)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "user-audit", "web-app")
	path := fmt.Sprintf("/v1/families/%s?min_seq=%d", f.FamilyID, f.Seq)

	anonymous := auditClient(nil)
	code, header, body := auditGet(t, anonymous, app, path, "")
	if code != http.StatusUnauthorized || !strings.HasPrefix(header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("no credentials: %d %v %s", code, header, body)
	}
	if code, _, body := auditGet(t, anonymous, app, path, testAuditToken+"x"); code != http.StatusUnauthorized {
		t.Fatalf("a wrong bearer token: %d %s", code, body)
	}
	if code, _, body := auditGet(t, anonymous, app, path, testAuditToken); code != http.StatusOK {
		t.Fatalf("the listed bearer token: %d %s", code, body)
	}
	cert := testAuditCAs.ca.issue(t, "security-team", false)
	if code, _, body := auditGet(t, auditClient(&cert), app, path, ""); code != http.StatusOK {
		t.Fatalf("a client certificate from the CA: %d %s", code, body)
	}
	stranger := mustCA(t, "another CA").issue(t, "intruder", false)
	req, _ := http.NewRequest(http.MethodGet, "https://"+app.AuditAddr()+path, nil)
	// Go's client withholds a certificate the server's CA list does not
	// name, so the stranger ends up unauthenticated, or refused in the
	// handshake by another client.
	if resp, err := auditClient(&stranger).Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a certificate from another CA was accepted: %d", resp.StatusCode)
		}
	}
	if resp, err := http.Get("http://" + app.AuditAddr() + path); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("plain HTTP served the audit API: %s", body)
		}
	}

	// The operations listener: metrics and health, no audit data.
	for _, p := range []string{"/metrics", "/healthz", "/.well-known/jwks.json"} {
		if code := status(t, app, p); code != http.StatusOK {
			t.Fatalf("GET %s on --http: %d", p, code)
		}
	}
	resp, err := http.Get("http://" + app.HTTPAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	var e wire.ErrorReply
	if json.Unmarshal(body, &e) != nil || resp.StatusCode != http.StatusNotFound || e.Error != "not_found" ||
		!strings.Contains(e.Description, "--audit-http") || strings.Contains(string(body), "user-audit") {
		t.Fatalf("GET %s on --http: %d %s", path, resp.StatusCode, body)
	}
	if !strings.Contains(logs.String(), "caller=cert:security-team") || !strings.Contains(logs.String(), "caller=token:tests") {
		t.Fatalf("audit requests are not logged with their caller:\n%s", logs)
	}
	if strings.Contains(logs.String(), testAuditToken) {
		t.Fatal("a bearer token reached the logs")
	}
}

// TestAuditAnswersAreNotCached: every audit answer, refusals and errors
// included, carries Cache-Control: no-store, and the bearer scheme is
// matched whatever its case (RFC 7235 section 2.1).
func TestAuditAnswersAreNotCached(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	f := mustIssue(t, eventstest.MustConnect(t, app.NATSURL()), "user-cache", "web-app")
	client := auditClient(nil)
	for _, c := range []struct {
		path, token string
		status      int
	}{
		{fmt.Sprintf("/v1/audit?family_id=%s&min_seq=%d", f.FamilyID, f.Seq), testAuditToken, http.StatusOK},
		{fmt.Sprintf("/v1/families/%s?min_seq=%d", f.FamilyID, f.Seq), testAuditToken, http.StatusOK},
		{"/v1/audit?limit=many", testAuditToken, http.StatusBadRequest},
		{"/v1/families/AAAAAAAAAAAAAAAAAAAAAA", testAuditToken, http.StatusNotFound},
		{"/v1/audit", "", http.StatusUnauthorized},
	} {
		code, header, body := auditGet(t, client, app, c.path, c.token)
		if code != c.status || header.Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s: %d, Cache-Control %q (%s); want %d, no-store", c.path, code, header.Get("Cache-Control"), body, c.status)
		}
	}
	for _, scheme := range []string{"bearer", "BEARER", "Bearer"} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+app.AuditAddr()+"/v1/audit?limit=1", nil)
		req.Header.Set("Authorization", scheme+" "+testAuditToken)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("scheme %q: %d", scheme, resp.StatusCode)
		}
	}
	for _, header := range []string{"Basic " + testAuditToken, "Bearer", "Bearer ", "Bearertoken " + testAuditToken} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+app.AuditAddr()+"/v1/audit?limit=1", nil)
		req.Header.Set("Authorization", header)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %.12q: %d", header, resp.StatusCode)
		}
	}
}

// TestAuditListenerBoundsConcurrency: past --audit-max-concurrent the audit
// API answers 503 with Retry-After instead of queueing.
func TestAuditListenerBoundsConcurrency(t *testing.T) {
	cfg := testConfig(t)
	cfg.AuditHTTP.MaxConcurrent = 1
	app := MustApp(t, cfg, nil)
	client := auditClient(nil)
	// A read of a sequence the stream never reaches holds the one slot for
	// the 2 s a min_seq wait lasts; the requests racing it must then be
	// refused. The slow one may itself lose the race for the slot: then it
	// is sent again.
	const guardRefusal = "too many audit requests"
	slow := func() chan string {
		done := make(chan string, 1)
		go func() {
			_, _, body := auditGet(t, client, app, "/v1/audit?min_seq=1000000", testAuditToken)
			done <- string(body)
		}()
		return done
	}
	held := slow()
	for {
		code, header, body := auditGet(t, client, app, "/v1/audit?limit=1", testAuditToken)
		if code == http.StatusServiceUnavailable {
			var e wire.ErrorReply
			if json.Unmarshal(body, &e) != nil || e.Error != "temporarily_unavailable" || header.Get("Retry-After") == "" ||
				!strings.Contains(e.Description, guardRefusal) {
				t.Fatalf("over the limit: %d %v %s", code, header, body)
			}
			break
		}
		select {
		case body := <-held:
			if !strings.Contains(body, guardRefusal) {
				t.Fatalf("the slow request ended (%s) and no concurrent request was refused", body)
			}
			held = slow()
		default:
		}
	}
	if body := <-held; !strings.Contains(body, "min_seq") {
		t.Fatalf("the slow request: %s, want the min_seq wait to run out", body)
	}
}

// TestV1OpenAudit: --v1-open-audit serves the audit API on a loopback
// --http without credentials, as contract v1 had it, and is refused for an
// address others can reach.
func TestV1OpenAudit(t *testing.T) {
	cfg := testConfig(t)
	cfg.AuditHTTP = AuditHTTPConfig{}
	cfg.V1OpenAudit = true
	app := MustApp(t, cfg, nil)
	f := mustIssue(t, eventstest.MustConnect(t, app.NATSURL()), "user-open", "web-app")
	resp, err := http.Get(fmt.Sprintf("http://%s/v1/families/%s?min_seq=%d", app.HTTPAddr(), f.FamilyID, f.Seq))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("GET /v1/families on --http with --v1-open-audit: %d %v", resp.StatusCode, resp.Header)
	}
	if app.AuditAddr() != "" {
		t.Fatal("an audit listener started without --audit-http")
	}
	none := func(string) (string, bool) { return "", false }
	if _, err := parseConfig([]string{"--v1-open-audit", "--http", "0.0.0.0:8080"}, none, io.Discard); err == nil {
		t.Fatal("--v1-open-audit accepted a non-loopback --http")
	}
}
