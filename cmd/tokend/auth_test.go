package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
)

// credentials are a key pair per role and a PKI, published in the
// environment variables that ops/nats/auth.conf and tls.conf read.
type credentials struct {
	ca    string            // CA certificate file
	seeds map[string]string // role -> nkey seed file
}

var roles = []string{"tokend", "issuer", "refresher", "auditor", "admin"}

func mustCredentials(t *testing.T) *credentials {
	t.Helper()
	dir := t.TempDir()
	c := &credentials{seeds: map[string]string{}}
	for _, role := range roles {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		seed, _ := kp.Seed()
		pub, _ := kp.PublicKey()
		c.seeds[role] = filepath.Join(dir, role+".nk")
		if err := os.WriteFile(c.seeds[role], seed, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("NKEY_"+strings.ToUpper(role), pub)
	}
	c.ca = writeTestPKI(t, dir)
	t.Setenv("NATS_TLS_CA", c.ca)
	t.Setenv("NATS_TLS_CERT", filepath.Join(dir, "server.pem"))
	t.Setenv("NATS_TLS_KEY", filepath.Join(dir, "server-key.pem"))
	return c
}

// login configures cfg to connect as the tokend role.
func (c *credentials) login(cfg *Config) {
	cfg.NATSNkey = c.seeds["tokend"]
	cfg.NATSInboxPrefix = "_INBOX_tokend"
	if cfg.NATSURL != "" {
		cfg.NATSTLSCA = c.ca
	}
}

// secureDeployment is tokend's embedded server running the shipped
// ops/nats/embedded.conf: nkey users per role, TLS, private inboxes.
type secureDeployment struct {
	*credentials
	app *App
	url string
}

func mustSecureDeployment(t *testing.T, configure ...func(*Config)) *secureDeployment {
	d := &secureDeployment{credentials: mustCredentials(t)}
	cfg := testConfig(t)
	cfg.NATSConfig = filepath.Join(opsDir, "nats", "embedded.conf")
	d.login(&cfg)
	for _, f := range configure {
		f(&cfg)
	}
	logs := &syncBuffer{}
	d.app = MustApp(t, cfg, logs)
	d.url = "tls://" + d.app.ns.Addr().String()
	t.Cleanup(func() {
		if strings.Contains(logs.String(), "Permissions Violation") {
			t.Errorf("tokend itself hit a permission violation: its permissions in auth.conf are too tight\n%s", logs)
		}
	})
	return d
}

// violations collects the permission errors the server reports on a
// connection.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) saw(what string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range v.errs {
		if strings.Contains(e, what) {
			return true
		}
	}
	return false
}

// connect logs in as role over TLS with its nkey and private inbox.
func (d *secureDeployment) connect(t *testing.T, role string) (*nats.Conn, *violations) {
	t.Helper()
	return d.credentials.connect(t, d.url, role)
}

// connect logs in to url as role over TLS with its nkey and private inbox.
func (c *credentials) connect(t *testing.T, url, role string, opts ...nats.Option) (*nats.Conn, *violations) {
	t.Helper()
	v := &violations{}
	nkey, err := nats.NkeyOptionFromSeed(c.seeds[role])
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, append(opts, nkey, nats.RootCAs(c.ca), nats.CustomInboxPrefix("_INBOX_"+role),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			v.mu.Lock()
			v.errs = append(v.errs, err.Error())
			v.mu.Unlock()
		}))...)
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(nc.Close)
	return nc, v
}

// allowed sends a request and wants a reply (a contract error is a reply).
func allowed(t *testing.T, nc *nats.Conn, subject string, body any) []byte {
	t.Helper()
	data, _ := json.Marshal(body)
	msg, err := nc.Request(subject, data, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	return msg.Data
}

// denied sends a request that the server must refuse to deliver: no reply,
// and a permissions violation reported on the connection.
func denied(t *testing.T, nc *nats.Conn, v *violations, subject string) {
	t.Helper()
	_, err := nc.Request(subject, []byte(`{}`), 300*time.Millisecond)
	if err == nil {
		t.Fatalf("%s got an answer", subject)
	}
	eventstest.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if !v.saw("Permissions Violation for Publish to \"" + subject + "\"") {
			return errors.New("no permissions violation for " + subject)
		}
		return nil
	})
}

func TestRolePermissions(t *testing.T) {
	// With personal data protection, so that tokend uses its key buckets.
	d := mustSecureDeployment(t, func(c *Config) { c.PIIKeyFile, c.PIIContextRetention = piiKeyFile(t), time.Hour })

	issuer, issuerErrs := d.connect(t, "issuer")
	var issued struct {
		RefreshToken string `json:"refresh_token"`
		FamilyID     string `json:"family_id"`
		Seq          uint64 `json:"seq"`
	}
	json.Unmarshal(allowed(t, issuer, "tokens.cmd.issue", map[string]string{"subject": "user-1", "client_id": "web-app"}), &issued)
	if issued.RefreshToken == "" {
		t.Fatal("the issuer could not issue")
	}
	allowed(t, issuer, "tokens.keys", nil)
	denied(t, issuer, issuerErrs, "tokens.cmd.refresh")
	denied(t, issuer, issuerErrs, "tokens.cmd.revoke")
	denied(t, issuer, issuerErrs, "tokens.query.audit")

	t.Run("refresher", func(t *testing.T) {
		nc, errs := d.connect(t, "refresher")
		var got struct {
			RefreshToken string `json:"refresh_token"`
		}
		json.Unmarshal(allowed(t, nc, "tokens.cmd.refresh", map[string]string{"refresh_token": issued.RefreshToken, "client_id": "web-app"}), &got)
		if got.RefreshToken == "" {
			t.Fatal("the refresher could not refresh")
		}
		denied(t, nc, errs, "tokens.cmd.issue")
		denied(t, nc, errs, "tokens.cmd.revoke")
		denied(t, nc, errs, "tokens.query.audit")
		denied(t, nc, errs, "$JS.API.STREAM.INFO.TOKENS")
		denied(t, nc, errs, "$JS.API.DIRECT.GET.TOKENS.$KV")
		wantReadDenied(t, nc, errs, "refresher")
		// Another role's replies, which carry tokens, are out of reach.
		sub, err := nc.SubscribeSync("_INBOX_issuer.>")
		if err == nil {
			sub.Unsubscribe()
		}
		eventstest.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
			if !errs.saw("Permissions Violation for Subscription to \"_INBOX_issuer.>\"") {
				return errors.New("the refresher may subscribe to the issuer's inbox")
			}
			return nil
		})
	})

	t.Run("auditor", func(t *testing.T) {
		nc, errs := d.connect(t, "auditor")
		var page struct{ Events []json.RawMessage }
		json.Unmarshal(allowed(t, nc, "tokens.query.audit", map[string]any{"family_id": issued.FamilyID, "min_seq": issued.Seq}), &page)
		if len(page.Events) == 0 {
			t.Fatalf("the auditor read %d events of the family", len(page.Events))
		}
		// The event stream itself is readable...
		js, _ := jetstream.New(nc, jetstream.WithDefaultTimeout(3*time.Second))
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		cons, err := js.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatalf("the auditor cannot read the stream: %v", err)
		}
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(3*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for range batch.Messages() {
			n++
		}
		if n != 1 || batch.Error() != nil {
			t.Fatalf("the auditor read %d events from the stream: %v", n, batch.Error())
		}
		// ...the keys are not, nor any command. A refused request gets no
		// answer, so the look-up only times out.
		kvCtx, kvCancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer kvCancel()
		if _, err := js.KeyValue(kvCtx, keys.Bucket); err == nil {
			t.Fatal("the auditor opened the key bucket")
		}
		denied(t, nc, errs, "$JS.API.DIRECT.GET.KV_TOKENS_KEYS.$KV.TOKENS_KEYS.keyset")
		denied(t, nc, errs, "tokens.cmd.issue")
		denied(t, nc, errs, "tokens.cmd.refresh")
		denied(t, nc, errs, "tokens.cmd.revoke")
	})

	t.Run("admin", func(t *testing.T) {
		nc, errs := d.connect(t, "admin")
		var r struct {
			RevokedFamilies int `json:"revoked_families"`
		}
		json.Unmarshal(allowed(t, nc, "tokens.cmd.revoke", map[string]string{"family_id": issued.FamilyID}), &r)
		if r.RevokedFamilies != 1 {
			t.Fatalf("the admin revoked %d families", r.RevokedFamilies)
		}
		// tokend records a revoke by subject on tokens.ops.> (with no
		// permission to, it would hit a violation, which fails the test).
		allowed(t, nc, "tokens.cmd.revoke", map[string]string{"subject": "user-1"})
		if n := countSubjects(t, d.app.js, "tokens.ops.>"); n != 1 {
			t.Fatalf("%d deployment events after a revoke by subject, want 1", n)
		}
		// An erasure destroys a key in TOKENS_SUBJECT_KEYS and records
		// its revoke (subject.revoked) and subject.erased.
		allowed(t, nc, "tokens.admin.subjects.erase", map[string]string{"subject": "user-1", "reason": "DSR-1", "by": "dpo"})
		if n := countSubjects(t, d.app.js, "tokens.ops.>"); n != 3 {
			t.Fatalf("%d deployment events after an erasure, want 3", n)
		}
		denied(t, nc, errs, "tokens.cmd.issue")
		denied(t, nc, errs, "tokens.cmd.refresh")
		// Only tokend writes the outbox of security events.
		denied(t, nc, errs, "tokens.ops.subject_revoked")
		denied(t, nc, errs, "tokens.ssf.0123456789abcdef0123456789abcdef")
		denied(t, nc, errs, "$JS.API.STREAM.INFO.KV_TOKENS_KEYS")
		// Nor the wrapped data keys of the subjects, or of the periods.
		denied(t, nc, errs, "$JS.API.DIRECT.GET.KV_TOKENS_SUBJECT_KEYS")
		denied(t, nc, errs, "$JS.API.STREAM.INFO.KV_TOKENS_PII_PERIODS")
	})

	t.Run("strangers", func(t *testing.T) {
		if nc, err := nats.Connect(d.url, nats.RootCAs(d.ca), nats.NoReconnect()); err == nil {
			nc.Close()
			t.Fatal("a client without credentials was let in")
		}
		plain := "nats://" + d.app.ns.Addr().String()
		nkey, _ := nats.NkeyOptionFromSeed(d.seeds["admin"])
		if nc, err := nats.Connect(plain, nkey, nats.NoReconnect()); err == nil {
			nc.Close()
			t.Fatal("a client without TLS was let in")
		}
	})
}

// wantReadDenied: the role can neither subscribe to the event subjects nor
// read the key bucket.
func wantReadDenied(t *testing.T, nc *nats.Conn, v *violations, role string) {
	t.Helper()
	for _, subject := range []string{"tokens.evt.>", "$KV.TOKENS_KEYS.>"} {
		if sub, err := nc.SubscribeSync(subject); err == nil {
			defer sub.Unsubscribe()
		}
		eventstest.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
			if !v.saw("Permissions Violation for Subscription to \"" + subject + "\"") {
				return errors.New("the " + role + " may subscribe to " + subject)
			}
			return nil
		})
	}
}

// writeTestPKI writes a CA and a server certificate for 127.0.0.1 into dir
// and returns the CA file.
func writeTestPKI(t *testing.T, dir string) string {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tokend test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		// Client auth too: cluster nodes present it to each other on routes.
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	write("server.pem", "CERTIFICATE", srvDER)
	write("server-key.pem", "EC PRIVATE KEY", keyDER)
	return filepath.Join(dir, "ca.pem")
}

// TestTokenctlWithRoleCredentials: the operator CLI logs in with a role's
// nkey, TLS and inbox prefix; an auditor's permissions are enough for
// audit and rebuild, a refresher's are not.
func TestTokenctlWithRoleCredentials(t *testing.T) {
	d := mustSecureDeployment(t)
	bin := filepath.Join(t.TempDir(), "tokenctl")
	if out, err := exec.Command("go", "build", "-o", bin, "../tokenctl").CombinedOutput(); err != nil {
		t.Fatalf("go build tokenctl: %v\n%s", err, out)
	}
	tokenctl := func(role string, args ...string) (string, error) {
		base := []string{"--nats-url", d.url, "--tls-ca", d.ca, "--nkey", d.seeds[role], "--inbox-prefix", "_INBOX_" + role, "--timeout", "3s"}
		out, err := exec.Command(bin, append(base, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := tokenctl("issuer", "--json", "issue", "--subject", "user-ctl", "--client-id", "web-app")
	if err != nil {
		t.Fatalf("issue as issuer: %v\n%s", err, out)
	}
	var issued struct {
		FamilyID string `json:"family_id"`
		Seq      uint64 `json:"seq"`
	}
	if err := json.Unmarshal([]byte(out), &issued); err != nil {
		t.Fatal(err)
	}
	if out, err := tokenctl("auditor", "audit", "--family", issued.FamilyID, "--min-seq", fmt.Sprint(issued.Seq)); err != nil || !strings.Contains(out, "token.issued") {
		t.Fatalf("audit as auditor: %v\n%s", err, out)
	}
	db := filepath.Join(t.TempDir(), "copy.db")
	if out, err := tokenctl("auditor", "rebuild", "--db", db); err != nil {
		t.Fatalf("rebuild as auditor: %v\n%s", err, out)
	}
	if out, err := tokenctl("refresher", "rebuild", "--db", filepath.Join(t.TempDir(), "no.db")); err == nil {
		t.Fatalf("a refresher rebuilt the read model from the stream:\n%s", out)
	}
	if out, err := tokenctl("auditor", "revoke", "--family", issued.FamilyID); err == nil {
		t.Fatalf("an auditor revoked:\n%s", out)
	}
	if out, err := tokenctl("admin", "revoke", "--family", issued.FamilyID); err != nil || !strings.Contains(out, "revoked_families: 1") {
		t.Fatalf("revoke as admin: %v\n%s", err, out)
	}
}

// TestCredsFile: tokend logs in to a NATS server in operator (JWT) mode with
// a credentials file, as on a managed deployment; a user of an account the
// server does not trust is turned away at startup.
func TestCredsFile(t *testing.T) {
	operator, _ := nkeys.CreateOperator()
	account, _ := nkeys.CreateAccount()
	opPub, _ := operator.PublicKey()
	accPub, _ := account.PublicKey()
	oc := jwt.NewOperatorClaims(opPub)
	opJWT, err := oc.Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	oc, err = jwt.DecodeOperatorClaims(opJWT)
	if err != nil {
		t.Fatal(err)
	}
	ac := jwt.NewAccountClaims(accPub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	accJWT, err := ac.Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	// Operator mode needs a system account.
	sys, _ := nkeys.CreateAccount()
	sysPub, _ := sys.PublicKey()
	sysJWT, err := jwt.NewAccountClaims(sysPub).Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	for pub, claims := range map[string]string{accPub: accJWT, sysPub: sysJWT} {
		if err := resolver.Store(pub, claims); err != nil {
			t.Fatal(err)
		}
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: t.TempDir(), JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30,
		TrustedOperators: []*jwt.OperatorClaims{oc}, AccountResolver: resolver, SystemAccount: sysPub})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })

	creds := func(signer nkeys.KeyPair) string {
		user, _ := nkeys.CreateUser()
		userPub, _ := user.PublicKey()
		seed, _ := user.Seed()
		uc := jwt.NewUserClaims(userPub)
		userJWT, err := uc.Encode(signer)
		if err != nil {
			t.Fatal(err)
		}
		data, err := jwt.FormatUserConfig(userJWT, seed)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "tokend.creds")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	cfg := testConfig(t)
	cfg.NATSURL, cfg.NATSCreds = ns.ClientURL(), creds(account)
	app := MustApp(t, cfg, nil)
	issued, err := app.api.Tokens.Issue(t.Context(), eventsIssue("user-creds", "web-app"))
	if err != nil || issued.Seq == 0 {
		t.Fatalf("issue through a creds login: %v", err)
	}

	stranger, _ := nkeys.CreateAccount()
	cfg = testConfig(t)
	cfg.NATSURL, cfg.NATSCreds = ns.ClientURL(), creds(stranger)
	app, err = Start(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		app.Stop()
		t.Fatal("a user of an untrusted account was let in")
	}
	if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("refused for another reason: %v", err)
	}
}
