package main

import (
	"errors"
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/clientaddr"
)

func TestConfigDefaultsEnvAndFlags(t *testing.T) {
	env := map[string]string{"TOKEND_REUSE_INTERVAL": "3s", "TOKEND_DATA_DIR": "/env/data", "TOKEND_STREAM_REPLICAS": "3"}
	getenv := func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	c, err := parseConfig([]string{"--data-dir", "/flag/data"}, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/flag/data" || c.ReuseInterval != 3*time.Second || c.StreamReplicas != 3 {
		t.Fatalf("flags must beat env, env must beat defaults: %+v", c)
	}
	d, err := parseConfig(nil, func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{DataDir: "./data", NATSListen: "127.0.0.1:4222", HTTPAddr: "127.0.0.1:8080", SubjectPrefix: "tokens",
		ReuseInterval: 10 * time.Second, IdleTTL: 336 * time.Hour, AbsoluteTTL: 720 * time.Hour, AccessTTL: 5 * time.Minute,
		Issuer: "http://127.0.0.1:8080", StreamReplicas: 1, JSMaxMemory: 256 << 20, JSMaxStore: 10 << 30,
		FamilyCache: 16384, RefreshRate: 10, RefreshBurst: 20, IssueRate: 200, IssueBurst: 400, ForeignRate: 5, ForeignBurst: 20,
		ReadyMaxLag: 10000, MaxCommands: 1024, MaxQueries: 64, LogLevel: "info", AuditHTTP: AuditHTTPConfig{MaxConcurrent: 4}, JSCipher: "chacha", EventState: "compact",
		Retention: 2160 * time.Hour, ArchiveAfter: 8760 * time.Hour, ForwardedHeader: "x-forwarded-for"}
	want.HTTPReadTimeout, want.HTTPWriteTimeout, want.HTTPIdleTimeout = 10*time.Second, 20*time.Second, 60*time.Second
	want.DPoPProofMaxAge, want.DPoPClockSkew = 60*time.Second, 5*time.Second
	want.DPoPSigningAlgs = "ES256,ES384,ES512,EdDSA,Ed25519,RS256,RS384,RS512,PS256,PS384,PS512"
	want.HTTPMaxConns, want.OAuthHTTP.MaxConns, want.AuditHTTP.MaxConns, want.NATSMaxConns = 256, 1024, 64, 1024
	if d != want {
		t.Fatalf("defaults:\n got %+v\nwant %+v", d, want)
	}
}

func TestConfigRefusesBadValues(t *testing.T) {
	none := func(string) (string, bool) { return "", false }
	for _, args := range [][]string{
		{"--reuse-interval", "-1s"},
		{"--reuse-interval", "ten"},
		{"--subject-prefix", "a b"},
		{"--stream-replicas", "0"},
		{"--access-ttl", "0s"},
		{"--rate-refresh-per-family", "-1"},
		{"--rate-issue-burst", "0"},
		{"--js-max-store", "0"},
		{"--js-max-memory", "-1"},
		{"--nats-url", "nats://x", "--nats-config", "n.conf"},
		{"--nats-tls-cert", "c.pem"},
		{"--nats-tls-ca", "ca.pem"},
		{"--audit-http", "127.0.0.1:8443"},
		{"--audit-http", "127.0.0.1:8443", "--audit-tls-cert", "c.pem", "--audit-tls-key", "k.pem"},
		{"--audit-http", "127.0.0.1:8443", "--audit-tokens", "t", "--audit-tls-cert", "c.pem"},
		{"--audit-http", "127.0.0.1:8443", "--audit-tokens", "t", "--audit-tls-cert", "c.pem", "--audit-tls-key", "k.pem", "--audit-max-concurrent", "0"},
		{"--v1-open-audit", "--http", "0.0.0.0:8080"},
		{"--v1-open-audit", "--http", "[::]:8080"},
		{"--js-key-file", "k", "--nats-url", "nats://x"},
		{"--js-cipher", "rot13"},
		{"--event-state", "v1"},
		{"--retention", "-1h"},
		{"--rate-foreign-burst", "0"},
		{"--trusted-proxies", "10.0.0.0/33"},
		{"--trusted-proxies", "proxy.example.com"},
		{"--forwarded-header", "x-real-ip"},
		{"--issuer", "https://auth.example.com?tenant=1"},
		{"--issuer", "https://auth.example.com/#top"},
		{"--issuer", "auth.example.com"},
		{"--issuer", "ftp://auth.example.com"},
		{"--issuer", "https://user@auth.example.com"},
		{"--issuer", ""},
		{"--oauth-http", ":8443"},
		{"--oauth-http", "0.0.0.0:8443"},
		{"--oauth-http", "[::]:8443"},
		{"--http-read-timeout", "0s"},
		{"--http-idle-timeout", "-1s"},
		{"--http-read-timeout", "10s", "--http-write-timeout", "14s"},
		{"--oauth-max-conns", "0"},
		{"--nats-max-conns", "0"},
		{"stray"},
	} {
		if _, err := parseConfig(args, none, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	bad := func(k string) (string, bool) { return "soon", k == "TOKEND_ACCESS_TTL" }
	if _, err := parseConfig(nil, bad, io.Discard); err == nil {
		t.Error("a malformed TOKEND_ACCESS_TTL was accepted")
	}
}

// TestConfigIssuer: --issuer is normalised once, so metadata, tokens and
// assertions agree; without it, --oauth-http leaves it to the listener's
// URL (empty here), but only when it is given neither by flag nor by
// variable.
func TestConfigIssuer(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--issuer", "https://auth.example.com/"}, nil, "https://auth.example.com"},
		{[]string{"--issuer", "https://auth.example.com/tenant/"}, nil, "https://auth.example.com/tenant"},
		{[]string{"--issuer", "http://127.0.0.1:8443"}, nil, "http://127.0.0.1:8443"},
		{nil, map[string]string{"TOKEND_ISSUER": "https://auth.example.com/"}, "https://auth.example.com"},
		{[]string{"--oauth-http", "127.0.0.1:8443"}, nil, ""},
		{[]string{"--oauth-http", "[::1]:8443"}, nil, ""},
		{[]string{"--oauth-http", ":8443", "--issuer", "https://auth.example.com/"}, nil, "https://auth.example.com"},
		{[]string{"--oauth-http", ":8443"}, map[string]string{"TOKEND_ISSUER": "https://auth.example.com"}, "https://auth.example.com"},
	} {
		getenv := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
		c, err := parseConfig(tc.args, getenv, io.Discard)
		if err != nil || c.Issuer != tc.want {
			t.Errorf("%v %v: issuer %q (%v), want %q", tc.args, tc.env, c.Issuer, err, tc.want)
		}
	}
}

func TestUnknownEnvIsReported(t *testing.T) {
	got := unknownEnv([]string{"TOKEND_DATA_DIR=/x", "TOKEND_DATADIR=/y", "HOME=/root", "TOKEND_AUDIT_HTTP=:8443", "TOKEND_HTPP=:1"})
	if want := []string{"TOKEND_DATADIR", "TOKEND_HTPP"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("unknownEnv = %v, want %v", got, want)
	}
}

func TestUsageNamesEveryVariable(t *testing.T) {
	var out strings.Builder
	if _, err := parseConfig([]string{"-h"}, func(string) (string, bool) { return "", false }, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	declareFlags(&Config{}, io.Discard).VisitAll(func(f *flag.Flag) {
		if !strings.Contains(out.String(), "--"+f.Name+" ") || !strings.Contains(out.String(), "["+envName(f.Name)+"]") {
			t.Errorf("usage lacks --%s or its variable %s", f.Name, envName(f.Name))
		}
	})
}

// TestConfigTrustedProxies: --trusted-proxies and --forwarded-header, or
// their variables, make the policy the HTTP listeners resolve callers with;
// by default no proxy is trusted.
func TestConfigTrustedProxies(t *testing.T) {
	env := map[string]string{"TOKEND_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8", "TOKEND_FORWARDED_HEADER": "Forwarded"}
	c, err := parseConfig(nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.clientAddr()
	if err != nil || len(p.Proxies) != 2 || p.Proxies[1].String() != "fd00::/8" || p.Header != clientaddr.Forwarded {
		t.Fatalf("policy %+v, %v", p, err)
	}
	c, err = parseConfig([]string{"--trusted-proxies", "127.0.0.0/8"}, func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := c.clientAddr(); err != nil || len(p.Proxies) != 1 || p.Header != clientaddr.XForwardedFor {
		t.Fatalf("policy %+v, %v", p, err)
	}
	c, _ = parseConfig(nil, func(string) (string, bool) { return "", false }, io.Discard)
	if p, err := c.clientAddr(); err != nil || len(p.Proxies) != 0 {
		t.Fatalf("default policy %+v, %v", p, err)
	}
}
