package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/clientaddr"
	"github.com/tokend/tokend/dpop"
)

// Config is everything tokend can be told, by flag or TOKEND_* variable.
type Config struct {
	DataDir         string
	NATSURL         string
	NATSListen      string
	NATSConfig      string
	NATSCreds       string
	NATSNkey        string
	NATSTLSCA       string
	NATSTLSCert     string
	NATSTLSKey      string
	NATSInboxPrefix string
	HTTPAddr        string
	AuditHTTP       AuditHTTPConfig
	OAuthHTTP       OAuthHTTPConfig
	V1OpenAudit     bool
	SubjectPrefix   string
	ReuseInterval   time.Duration
	IdleTTL         time.Duration
	AbsoluteTTL     time.Duration
	AccessTTL       time.Duration
	Issuer          string // normalised; empty: the OAuth listener's URL
	StreamReplicas  int
	SyncAlways      bool
	JSMaxMemory     int64
	JSMaxStore      int64
	JSKeyFile       string
	PIIKeyFile      string
	// PIIContextRetention, if set, makes events' contexts (IP, user
	// agent, ...) unreadable that long after they were written.
	PIIContextRetention time.Duration
	JSCipher            string
	EventState          string
	StreamMaxBytes      int64
	Retention           time.Duration
	ArchiveAfter        time.Duration // how long family.archived summaries are kept
	FamilyCache         int
	RefreshRate         float64
	RefreshBurst        int
	IssueRate           float64
	IssueBurst          int
	ForeignRate         float64
	ForeignBurst        int
	// DPoP proofs (RFC 9449): see dpop.Verifier.
	DPoPRequireNonce bool
	DPoPProofMaxAge  time.Duration
	DPoPClockSkew    time.Duration
	DPoPSigningAlgs  string
	ReadyMaxLag      uint64
	MaxCommands      int // commands handled at once
	MaxQueries       int // queries handled at once
	LogLevel         string
	Pprof            bool
	// ClientRegistry enforces the client registry; it is opened and
	// administered either way.
	ClientRegistry bool
	// TrustedProxies and ForwardedHeader say how the HTTP listeners find
	// a caller's address behind a proxy (clientAddr).
	TrustedProxies  string
	ForwardedHeader clientaddr.Header

	// Every HTTP listener's timeouts, and the --http listener's and the
	// embedded NATS server's connection caps (listeners.go).
	HTTPReadTimeout, HTTPWriteTimeout, HTTPIdleTimeout time.Duration
	HTTPMaxConns, NATSMaxConns                         int

	// keySkew, if set (tests), replaces keys.DefaultClockSkew: how long a
	// retired key outlives the tokens made under it.
	keySkew time.Duration
}

// OAuthHTTPConfig is the OAuth endpoints' listener, which faces clients.
type OAuthHTTPConfig struct {
	Addr            string // empty: no OAuth listener
	TLSCert, TLSKey string // empty: plain HTTP (behind a TLS-terminating proxy)
	MaxConns        int    // connections open at once
}

// AuditHTTPConfig is the audit API's own listener: TLS always, and callers
// authenticated by a client certificate, a bearer token, or either.
type AuditHTTPConfig struct {
	Addr          string // empty: no audit listener
	TLSCert       string
	TLSKey        string
	ClientCA      string // verify client certificates against this CA
	TokensFile    string // bearer tokens, as SHA-256 hashes
	MaxConcurrent int
	MaxConns      int // connections open at once
}

// envName is the variable that sets a flag: TOKEND_ and the flag's name in
// capitals, dashes as underscores.
func envName(flagName string) string {
	return "TOKEND_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// errVersion is parseConfig's answer to --version.
var errVersion = errors.New("--version")

// versionFlag asks for the version only, so no variable sets it: a
// TOKEND_VERSION in a unit's environment must not keep tokend from starting.
const versionFlag = "version"

// parseConfig reads flags from args, each defaulting to its TOKEND_<FLAG>
// variable and then to the contract's default. With --version it returns
// errVersion, whatever else args and the variables hold.
func parseConfig(args []string, getenv func(string) (string, bool), usage io.Writer) (Config, error) {
	var c Config
	fs := declareFlags(&c, usage)

	var envErr error
	set := map[string]bool{} // flags given by variable or on the command line
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		if v, ok := getenv(name); ok {
			set[f.Name] = true
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s=%q: %v", name, v, err)
			}
		}
	})
	version := fs.Bool(versionFlag, false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if *version {
		return Config{}, errVersion
	}
	if envErr != nil {
		return Config{}, envErr
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.OAuthHTTP.Addr != "" && !set["issuer"] {
		c.Issuer = "" // the OAuth listener's URL, once it is bound
	} else {
		var err error
		if c.Issuer, err = normalizeIssuer(c.Issuer); err != nil {
			return Config{}, err
		}
	}
	return c, c.validate()
}

// normalizeIssuer returns issuer in the one form that metadata, the iss of
// access tokens and the aud of client assertions all use: RFC 8414
// section 2 (an http(s) URL without query or fragment), with no trailing
// slash, since issuers are compared as strings.
func normalizeIssuer(issuer string) (string, error) {
	u, err := url.Parse(issuer)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil ||
		strings.ContainsAny(issuer, "?#") {
		return "", fmt.Errorf("--issuer %q must be an http or https URL without user, query or fragment", issuer)
	}
	return strings.TrimSuffix(issuer, "/"), nil
}

// unknownEnv returns the TOKEND_* names in environ that no flag reads: a
// typo there would otherwise be ignored silently.
func unknownEnv(environ []string) []string {
	known := map[string]bool{}
	declareFlags(&Config{}, io.Discard).VisitAll(func(f *flag.Flag) { known[envName(f.Name)] = true })
	var unknown []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "TOKEND_") && !known[name] {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	return unknown
}

// declareFlags declares every flag on a new flag set writing into c, with
// a usage text that names each flag's variable.
func declareFlags(c *Config, usage io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tokend", flag.ContinueOnError)
	fs.SetOutput(usage)
	fs.Usage = func() { printUsage(fs, usage) }
	fs.StringVar(&c.DataDir, "data-dir", "./data", "the embedded JetStream store and the SQLite read model")
	fs.StringVar(&c.NATSURL, "nats-url", "", "connect to an existing NATS server or cluster instead of embedding one")
	fs.StringVar(&c.NATSListen, "nats-listen", "127.0.0.1:4222", "client listen address of the embedded server")
	fs.StringVar(&c.NATSConfig, "nats-config", "", "embedded server: load this nats-server configuration (accounts, permissions, TLS); tokend's flags fill in what it leaves unset")
	fs.StringVar(&c.NATSCreds, "nats-creds", "", "authenticate to NATS with this credentials (JWT) file")
	fs.StringVar(&c.NATSNkey, "nats-nkey", "", "authenticate to NATS with the nkey seed in this file")
	fs.StringVar(&c.NATSTLSCA, "nats-tls-ca", "", "with --nats-url: verify the server against the CA certificates in this PEM file")
	fs.StringVar(&c.NATSTLSCert, "nats-tls-cert", "", "with --nats-url: client certificate (PEM) for mutual TLS")
	fs.StringVar(&c.NATSTLSKey, "nats-tls-key", "", "with --nats-url: private key (PEM) of --nats-tls-cert")
	fs.StringVar(&c.NATSInboxPrefix, "nats-inbox-prefix", "", "prefix of tokend's reply subjects (default _INBOX); a private prefix lets permissions keep other users from reading its replies")
	fs.StringVar(&c.HTTPAddr, "http", "127.0.0.1:8080", "HTTP listen address of metrics, health, readiness and the JWKS")
	fs.StringVar(&c.OAuthHTTP.Addr, "oauth-http", "", "listen address of the OAuth 2.0 endpoints (token, revocation, introspection, metadata); off when empty. --issuer must be its public URL (default: its own URL)")
	fs.StringVar(&c.OAuthHTTP.TLSCert, "oauth-tls-cert", "", "certificate (PEM) of the OAuth listener; without it, it serves plain HTTP for a TLS-terminating proxy")
	fs.StringVar(&c.OAuthHTTP.TLSKey, "oauth-tls-key", "", "private key (PEM) of --oauth-tls-cert")
	fs.StringVar(&c.TrustedProxies, "trusted-proxies", "", "believe the client address that HTTP peers in these networks (comma-separated `CIDRs`, as 10.0.0.0/8,fd00::/8) forward in --forwarded-header; empty: trust no proxy, record each peer's own address")
	fs.TextVar(&c.ForwardedHeader, "forwarded-header", clientaddr.XForwardedFor, "the `header` the --trusted-proxies write the client's address to: x-forwarded-for or forwarded (RFC 7239); only it is read, so they must set or append to it on every request")
	fs.StringVar(&c.AuditHTTP.Addr, "audit-http", "", "HTTPS listen address of the audit API (/v1/audit, /v1/families); off when empty")
	fs.StringVar(&c.AuditHTTP.TLSCert, "audit-tls-cert", "", "certificate (PEM) of the audit listener")
	fs.StringVar(&c.AuditHTTP.TLSKey, "audit-tls-key", "", "private key (PEM) of --audit-tls-cert")
	fs.StringVar(&c.AuditHTTP.ClientCA, "audit-client-ca", "", "accept audit callers with a client certificate signed by a CA in this PEM file (mutual TLS)")
	fs.StringVar(&c.AuditHTTP.TokensFile, "audit-tokens", "", "accept audit callers with a bearer token whose SHA-256 is in this file (lines: NAME sha256:HEX; tokenctl audit-token makes them)")
	fs.IntVar(&c.AuditHTTP.MaxConcurrent, "audit-max-concurrent", 4, "audit requests served at once; more are answered 503 with Retry-After")
	fs.BoolVar(&c.V1OpenAudit, "v1-open-audit", false, "also serve the audit API on --http without authentication, as contract v1 did; only for a loopback --http")
	fs.StringVar(&c.SubjectPrefix, "subject-prefix", "tokens", "prefix of every subject")
	fs.DurationVar(&c.ReuseInterval, "reuse-interval", 10*time.Second, "grace window for retries/concurrent use of the just-rotated parent; 0 disables")
	fs.DurationVar(&c.IdleTTL, "refresh-idle-ttl", 336*time.Hour, "a family dies if not refreshed for this long")
	fs.DurationVar(&c.AbsoluteTTL, "refresh-absolute-ttl", 720*time.Hour, "a family dies this long after issue, whatever happens")
	fs.DurationVar(&c.AccessTTL, "access-ttl", 5*time.Minute, "lifetime of minted access tokens")
	fs.StringVar(&c.Issuer, "issuer", "http://127.0.0.1:8080", "iss of access tokens and, with --oauth-http, the public base URL of the OAuth endpoints (without it, the OAuth listener's own URL)")
	fs.IntVar(&c.StreamReplicas, "stream-replicas", 1, "replicas of the event stream when running on a cluster")
	fs.BoolVar(&c.SyncAlways, "sync-always", false, "embedded server: fsync every write before acknowledging (default: fsync every 2 minutes)")
	fs.Int64Var(&c.JSMaxMemory, "js-max-memory", 256<<20, "embedded server: JetStream memory limit in bytes")
	fs.Int64Var(&c.JSMaxStore, "js-max-store", 10<<30, "embedded server: JetStream disk limit in bytes")
	fs.StringVar(&c.JSKeyFile, "js-key-file", "", "embedded server: encrypt the JetStream store with the key in this file (at least 32 bytes; keep a copy: without it the data is lost)")
	fs.StringVar(&c.PIIKeyFile, "pii-key-file", "", "protect personal data (subjects, IPs, user agents, context): seal it in events and the read model under per-subject keys derived from the deployment key in this file (at least 32 bytes, not readable by other users), so that tokenctl subjects erase can forget a person; see docs/operations.md")
	fs.DurationVar(&c.PIIContextRetention, "pii-context-retention", 0, "with --pii-key-file: keep events' contexts (IP addresses, user agents, ...) readable this long, whole seconds (0: as long as the subject's other data); past it they are unreadable, the rest of the event stays")
	fs.StringVar(&c.EventState, "event-state", "compact", "how events store the family's state: compact (data.state) or full (data.family, readable by versions before 0.2's data.state; for a rolling upgrade from them)")
	fs.StringVar(&c.JSCipher, "js-cipher", "chacha", "embedded server: cipher of --js-key-file, chacha (ChaCha20-Poly1305) or aes (AES-GCM)")
	fs.Int64Var(&c.StreamMaxBytes, "stream-max-bytes", 0, "size limit of the TOKENS stream in bytes; when full, writes are refused (default: 90% of --js-max-store when embedded, else the account's limit)")
	fs.DurationVar(&c.Retention, "retention", 2160*time.Hour, "keep a family's events this long after its absolute expiry (0: for ever)")
	fs.DurationVar(&c.ArchiveAfter, "archive-retention", 8760*time.Hour, "keep the family.archived summary of a family this long (0: for ever)")
	fs.IntVar(&c.FamilyCache, "family-cache", 16384, "family states kept in memory by the writer (a miss costs one read of the family's last event)")
	fs.Float64Var(&c.RefreshRate, "rate-refresh-per-family", 10, "rotations and refused refreshes per family per second, on average (0: no limit); parallel refreshes answered from the reuse interval and replays are never limited")
	fs.IntVar(&c.RefreshBurst, "rate-refresh-burst", 20, "refreshes per family allowed at once above the rate")
	fs.Float64Var(&c.IssueRate, "rate-issue-per-client", 200, "issues per client id per second, on average (0: no limit)")
	fs.IntVar(&c.IssueBurst, "rate-issue-burst", 400, "issues per client id allowed at once above the rate")
	fs.Float64Var(&c.ForeignRate, "rate-foreign-per-client", 5, "refresh tokens of other clients' families a client may present per second, on average (0: no limit); charged to the presenting client, never to the owner's family")
	fs.IntVar(&c.ForeignBurst, "rate-foreign-burst", 20, "such presentations allowed at once above the rate")
	fs.BoolVar(&c.DPoPRequireNonce, "dpop-require-nonce", false, "every client's DPoP proofs must carry a server nonce (RFC 9449 section 8); without it, only those of clients registered with dpop_require_nonce")
	fs.DurationVar(&c.DPoPProofMaxAge, "dpop-proof-max-age", 60*time.Second, "a DPoP proof is accepted this long after its iat (plus --dpop-clock-skew), and its jti is remembered as long")
	fs.DurationVar(&c.DPoPClockSkew, "dpop-clock-skew", 5*time.Second, "how far a client's clock may be ahead of or behind tokend's when it makes a DPoP proof")
	fs.StringVar(&c.DPoPSigningAlgs, "dpop-signing-algs", strings.Join(dpop.AlgNames(dpop.DefaultAlgs), ","), "the JWS algorithms a DPoP proof may be signed with, comma-separated (asymmetric ones only)")
	fs.IntVar(&c.MaxCommands, "max-commands-in-flight", api.DefaultCommandsInFlight, "commands (issue, refresh, revoke) handled at once; as many more may wait up to 1s for a slot, the rest are answered temporarily_unavailable")
	fs.IntVar(&c.MaxQueries, "max-queries-in-flight", api.DefaultQueriesInFlight, "queries handled at once, apart from the commands' budget so slow audits cannot stall refreshes; as many more may wait up to 1s")
	fs.DurationVar(&c.HTTPReadTimeout, "http-read-timeout", 10*time.Second, "every HTTP listener: the longest a client may take to send a request, headers and body (a valid one is a few KiB)")
	fs.DurationVar(&c.HTTPWriteTimeout, "http-write-timeout", 20*time.Second, "every HTTP listener: the longest from reading a request's headers to having written its answer; at least --http-read-timeout plus 5s, the longest a handler runs")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", 60*time.Second, "every HTTP listener: how long a keep-alive connection may wait for its next request")
	fs.IntVar(&c.HTTPMaxConns, "http-max-conns", defaultHTTPMaxConns, "connections the --http listener keeps open at once; more are answered 503 with Retry-After and closed")
	fs.IntVar(&c.OAuthHTTP.MaxConns, "oauth-max-conns", defaultOAuthMaxConns, "connections the OAuth listener keeps open at once; more are answered 503 with Retry-After (closed, under TLS)")
	fs.IntVar(&c.AuditHTTP.MaxConns, "audit-max-conns", defaultAuditMaxConns, "connections the audit listener keeps open at once; more are closed")
	fs.IntVar(&c.NATSMaxConns, "nats-max-conns", defaultNATSMaxConns, "embedded server: client connections it accepts, tokend's own included (a max_connections in --nats-config wins)")
	fs.Uint64Var(&c.ReadyMaxLag, "ready-max-lag", 10000, "/readyz fails while the projections are more than this many events behind the stream")
	fs.BoolVar(&c.ClientRegistry, "client-registry", false, "enforce the client registry (TOKENS_CLIENTS, managed with tokenctl clients): only registered clients get tokens, within their scopes and audiences; when off the registry is still kept and administered, but not enforced")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve Go's profiler at /debug/pprof/ on the HTTP address (for benchmarks and incidents; keep the address private)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	return fs
}

// printUsage lists every flag with its default and its variable.
func printUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `Usage: tokend [flags]

tokend runs the refresh-token service: by default with an embedded NATS
server on 127.0.0.1:4222, metrics and health on http://127.0.0.1:8080 and
all state under ./data. Every flag can also be set by the environment
variable shown under it; a flag on the command line beats its variable.

`)
	fs.VisitAll(func(f *flag.Flag) {
		kind, help := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s %s\n    \t%s", f.Name, kind, help)
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		if f.Name != versionFlag {
			fmt.Fprintf(w, "\n    \t[%s]", envName(f.Name))
		}
		fmt.Fprintln(w)
	})
}

func (c Config) validate() error {
	if _, err := dpop.ParseAlgs(c.DPoPSigningAlgs); err != nil {
		return fmt.Errorf("--dpop-signing-algs: %w", err)
	}
	switch {
	case c.SubjectPrefix == "" || strings.ContainsAny(c.SubjectPrefix, " *>\t"):
		return fmt.Errorf("--subject-prefix %q is not a valid subject prefix", c.SubjectPrefix)
	case c.ReuseInterval < 0:
		return fmt.Errorf("--reuse-interval must not be negative")
	case c.IdleTTL <= 0 || c.AbsoluteTTL <= 0 || c.AccessTTL <= 0:
		return fmt.Errorf("--refresh-idle-ttl, --refresh-absolute-ttl and --access-ttl must be positive")
	case c.JSMaxMemory <= 0 || c.JSMaxStore <= 0:
		// nats-server reads 0 or less as "75% of the machine".
		return fmt.Errorf("--js-max-memory and --js-max-store must be positive")
	case c.RefreshRate < 0 || c.IssueRate < 0 || c.RefreshBurst < 1 || c.IssueBurst < 1:
		return fmt.Errorf("rate limits must not be negative and bursts must be at least 1")
	case c.StreamReplicas < 1 || c.StreamReplicas > 5:
		return fmt.Errorf("--stream-replicas must be 1..5")
	case c.NATSURL != "" && c.NATSConfig != "":
		return fmt.Errorf("--nats-config configures the embedded server; it cannot go with --nats-url")
	case c.JSKeyFile != "" && c.NATSURL != "":
		return fmt.Errorf("--js-key-file encrypts the embedded server's store; with --nats-url configure encryption on that server")
	case c.PIIContextRetention != 0 && c.PIIKeyFile == "":
		return fmt.Errorf("--pii-context-retention needs --pii-key-file")
	case c.PIIContextRetention < 0 || c.PIIContextRetention%time.Second != 0 || c.PIIContextRetention > 0 && c.PIIContextRetention < time.Second:
		return fmt.Errorf("--pii-context-retention must be whole seconds, at least one (or 0)")
	case c.EventState != "compact" && c.EventState != "full":
		return fmt.Errorf("--event-state must be compact or full")
	case c.JSCipher != "chacha" && c.JSCipher != "aes":
		return fmt.Errorf("--js-cipher must be chacha or aes")
	case c.StreamMaxBytes < 0:
		return fmt.Errorf("--stream-max-bytes must not be negative")
	case c.Retention < 0 || c.ArchiveAfter < 0:
		return fmt.Errorf("--retention and --archive-retention must not be negative")
	case c.ArchiveAfter != 0 && (c.Retention == 0 || c.ArchiveAfter < c.Retention):
		// The summary must outlive the history it summarizes: once it goes,
		// the family's state would come from an older event again.
		return fmt.Errorf("--archive-retention must be 0 (for ever) or at least --retention (and --retention not 0)")
	case c.MaxCommands < 1 || c.MaxQueries < 1:
		return fmt.Errorf("--max-commands-in-flight and --max-queries-in-flight must be at least 1")
	case c.ForeignRate < 0 || c.ForeignBurst < 1:
		return fmt.Errorf("rate limits must not be negative and bursts must be at least 1")
	case c.DPoPProofMaxAge < time.Second || c.DPoPClockSkew < 0 || c.DPoPClockSkew > c.DPoPProofMaxAge:
		return fmt.Errorf("--dpop-proof-max-age must be at least 1s, and --dpop-clock-skew between 0 and it")
	case (c.OAuthHTTP.TLSCert == "") != (c.OAuthHTTP.TLSKey == ""):
		return fmt.Errorf("--oauth-tls-cert and --oauth-tls-key go together")
	case c.OAuthHTTP.TLSCert != "" && c.OAuthHTTP.Addr == "":
		return fmt.Errorf("--oauth-tls-cert needs --oauth-http")
	case c.Issuer == "" && !specificHost(c.OAuthHTTP.Addr):
		return fmt.Errorf("--oauth-http %s listens on every address, so its URL is unknown: set --issuer to its public URL", c.OAuthHTTP.Addr)
	case (c.NATSTLSCert == "") != (c.NATSTLSKey == ""):
		return fmt.Errorf("--nats-tls-cert and --nats-tls-key go together")
	case c.NATSURL == "" && (c.NATSTLSCA != "" || c.NATSTLSCert != ""):
		return fmt.Errorf("--nats-tls-* apply to --nats-url; the embedded server's TLS comes from --nats-config")
	}
	if _, err := c.clientAddr(); err != nil {
		return err
	}
	if err := c.validateListeners(); err != nil {
		return err
	}
	if c.V1OpenAudit && !loopback(c.HTTPAddr) {
		return fmt.Errorf("--v1-open-audit serves the audit API without authentication: --http %s must be a loopback address", c.HTTPAddr)
	}
	return c.AuditHTTP.validate()
}

// clientAddr is how the HTTP listeners find a caller's address:
// --trusted-proxies and --forwarded-header.
func (c Config) clientAddr() (clientaddr.Policy, error) {
	proxies, err := clientaddr.ParseProxies(c.TrustedProxies)
	if err != nil {
		return clientaddr.Policy{}, fmt.Errorf("--trusted-proxies: %w", err)
	}
	return clientaddr.Policy{Proxies: proxies, Header: c.ForwardedHeader}, nil
}

func (a AuditHTTPConfig) validate() error {
	switch {
	case a.Addr == "":
		return nil
	case a.TLSCert == "" || a.TLSKey == "":
		return fmt.Errorf("--audit-http needs --audit-tls-cert and --audit-tls-key: the audit API is served over TLS only")
	case a.ClientCA == "" && a.TokensFile == "":
		return fmt.Errorf("--audit-http needs --audit-client-ca or --audit-tokens: the audit API serves authenticated callers only")
	case a.MaxConcurrent < 1:
		return fmt.Errorf("--audit-max-concurrent must be at least 1")
	}
	return nil
}

// specificHost reports whether a listen address names one host, so that
// a URL can be made of it.
func specificHost(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsUnspecified()
}

// loopback reports whether a listen address only accepts local connections.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func lookupEnv(name string) (string, bool) { return os.LookupEnv(name) }
