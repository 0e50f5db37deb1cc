package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
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
	SubjectPrefix   string
	ReuseInterval   time.Duration
	IdleTTL         time.Duration
	AbsoluteTTL     time.Duration
	AccessTTL       time.Duration
	Issuer          string
	StreamReplicas  int
	SyncAlways      bool
	JSMaxMemory     int64
	JSMaxStore      int64
	FamilyCache     int
	RefreshRate     float64
	RefreshBurst    int
	IssueRate       float64
	IssueBurst      int
	ReadyMaxLag     uint64
	LogLevel        string
	Pprof           bool
}

// parseConfig reads flags from args, each defaulting to its TOKEND_<FLAG>
// variable (dashes as underscores) and then to the contract's default.
func parseConfig(args []string, getenv func(string) (string, bool), usage io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("tokend", flag.ContinueOnError)
	fs.SetOutput(usage)
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
	fs.StringVar(&c.HTTPAddr, "http", "127.0.0.1:8080", "HTTP listen address (metrics, health, audit API)")
	fs.StringVar(&c.SubjectPrefix, "subject-prefix", "tokens", "prefix of every subject")
	fs.DurationVar(&c.ReuseInterval, "reuse-interval", 10*time.Second, "grace window for retries/concurrent use of the just-rotated parent; 0 disables")
	fs.DurationVar(&c.IdleTTL, "refresh-idle-ttl", 336*time.Hour, "a family dies if not refreshed for this long")
	fs.DurationVar(&c.AbsoluteTTL, "refresh-absolute-ttl", 720*time.Hour, "a family dies this long after issue, whatever happens")
	fs.DurationVar(&c.AccessTTL, "access-ttl", 5*time.Minute, "lifetime of minted access tokens")
	fs.StringVar(&c.Issuer, "issuer", "http://127.0.0.1:8080", "iss of access tokens")
	fs.IntVar(&c.StreamReplicas, "stream-replicas", 1, "replicas of the event stream when running on a cluster")
	fs.BoolVar(&c.SyncAlways, "sync-always", false, "embedded server: fsync every write before acknowledging (default: fsync every 2 minutes)")
	fs.Int64Var(&c.JSMaxMemory, "js-max-memory", 256<<20, "embedded server: JetStream memory limit in bytes")
	fs.Int64Var(&c.JSMaxStore, "js-max-store", 10<<30, "embedded server: JetStream disk limit in bytes")
	fs.IntVar(&c.FamilyCache, "family-cache", 16384, "family states kept in memory by the writer (a miss costs one read of the family's last event)")
	fs.Float64Var(&c.RefreshRate, "rate-refresh-per-family", 10, "rotations and refused refreshes per family per second, on average (0: no limit); parallel refreshes answered from the reuse interval and replays are never limited")
	fs.IntVar(&c.RefreshBurst, "rate-refresh-burst", 20, "refreshes per family allowed at once above the rate")
	fs.Float64Var(&c.IssueRate, "rate-issue-per-client", 200, "issues per client id per second, on average (0: no limit)")
	fs.IntVar(&c.IssueBurst, "rate-issue-burst", 400, "issues per client id allowed at once above the rate")
	fs.Uint64Var(&c.ReadyMaxLag, "ready-max-lag", 10000, "/readyz fails while the projections are more than this many events behind the stream")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve Go's profiler at /debug/pprof/ on the HTTP address (for benchmarks and incidents; keep the address private)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")

	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := "TOKEND_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := getenv(name); ok {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s=%q: %v", name, v, err)
			}
		}
	})
	if envErr != nil {
		return Config{}, envErr
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return c, c.validate()
}

func (c Config) validate() error {
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
	case (c.NATSTLSCert == "") != (c.NATSTLSKey == ""):
		return fmt.Errorf("--nats-tls-cert and --nats-tls-key go together")
	case c.NATSURL == "" && (c.NATSTLSCA != "" || c.NATSTLSCert != ""):
		return fmt.Errorf("--nats-tls-* apply to --nats-url; the embedded server's TLS comes from --nats-config")
	}
	return nil
}

func lookupEnv(name string) (string, bool) { return os.LookupEnv(name) }
