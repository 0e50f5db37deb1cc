package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// minMaxPayload is the contract's floor for the embedded server's max_payload.
const minMaxPayload = 1 << 20

// connect joins the NATS server of --nats-url, or starts the embedded one
// and joins it in-process.
func (a *App) connect() error {
	opts, err := a.clientOptions()
	if err != nil {
		return err
	}
	if a.cfg.NATSURL != "" {
		nc, err := nats.Connect(a.cfg.NATSURL, opts...)
		if err != nil {
			return fmt.Errorf("connect %s: %w", a.cfg.NATSURL, err)
		}
		a.nc = nc
		return nil
	}
	ns, err := embeddedServer(a.cfg, a.log)
	if err != nil {
		return err
	}
	a.ns = ns
	// In-process (a net.Pipe), not over loopback TCP: each rotation crosses
	// this connection five times, and on a virtual machine a socket's
	// syscalls cost more than the pipe's goroutine handoffs. One worker's
	// rotations took 30% less CPU and p50 0.18 instead of 0.25 ms; under
	// load the two measured alike (docs/benchmarks.md). It also keeps the
	// client off TLS when the listener has it; the credentials still apply.
	opts = append(opts, nats.InProcessServer(ns))
	nc, err := nats.Connect("nats://"+ns.Addr().String(), opts...)
	if err != nil {
		return fmt.Errorf("connect embedded server: %w", err)
	}
	a.nc = nc
	return nil
}

// clientOptions are the options of tokend's own connection: reconnect for
// ever, log state changes, and authenticate as configured.
func (a *App) clientOptions() ([]nats.Option, error) {
	c := a.cfg
	opts := []nats.Option{nats.Name("tokend"), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		// While disconnected, publish at once with an error instead of
		// buffering until the reconnect: a buffered append would be stored
		// after its command had answered temporarily_unavailable, and the
		// client's retry of the same token would then be a replay. It also
		// makes commands fail fast during an outage instead of waiting out
		// their timeout.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own close at shutdown
				a.log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { a.log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			// Permission violations land here: a misconfigured account must be visible.
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			a.log.Error("nats error", "err", err, "subscription", subject)
		}),
	}
	if c.NATSCreds != "" {
		opts = append(opts, nats.UserCredentials(c.NATSCreds))
	}
	if c.NATSNkey != "" {
		opt, err := nats.NkeyOptionFromSeed(c.NATSNkey)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey: %w", err)
		}
		opts = append(opts, opt)
	}
	if c.NATSInboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(c.NATSInboxPrefix))
	}
	if c.NATSURL != "" && (c.NATSTLSCA != "" || c.NATSTLSCert != "") {
		tc, err := clientTLS(c.NATSTLSCA, c.NATSTLSCert, c.NATSTLSKey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(tc))
	}
	return opts, nil
}

// clientTLS trusts the CA in caFile (the system roots when empty) and
// presents the client certificate, if given, for mutual TLS.
func clientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-tls-ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--nats-tls-ca %s: no PEM certificate in it", caFile)
		}
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-tls-cert/--nats-tls-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// embeddedOptions returns the embedded server's options: those of
// --nats-config if given (accounts, permissions, TLS, listen address),
// completed by tokend's flags for whatever the file leaves unset.
func embeddedOptions(cfg Config) (*server.Options, error) {
	opts := &server.Options{}
	if cfg.NATSConfig != "" {
		var err error
		if opts, err = server.ProcessConfigFile(cfg.NATSConfig); err != nil {
			return nil, fmt.Errorf("--nats-config: %w", err)
		}
	}
	if opts.Port == 0 {
		host, portStr, err := net.SplitHostPort(cfg.NATSListen)
		if err != nil {
			return nil, fmt.Errorf("--nats-listen: %w", err)
		}
		if opts.Port, err = strconv.Atoi(portStr); err != nil {
			return nil, fmt.Errorf("--nats-listen port: %w", err)
		}
		if opts.Host == "" {
			opts.Host = host
		}
	}
	if opts.ServerName == "" {
		opts.ServerName = "tokend"
	}
	opts.JetStream = true
	if opts.StoreDir == "" {
		opts.StoreDir = filepath.Join(cfg.DataDir, "jetstream")
	}
	// JetStream would otherwise claim 75% of the machine's memory and disk.
	if opts.JetStreamMaxMemory == 0 {
		opts.JetStreamMaxMemory = cfg.JSMaxMemory
	}
	if opts.JetStreamMaxStore == 0 {
		opts.JetStreamMaxStore = cfg.JSMaxStore
	}
	opts.SyncAlways = opts.SyncAlways || cfg.SyncAlways
	if cfg.JSKeyFile != "" {
		key, err := readStoreKey(cfg.JSKeyFile)
		if err != nil {
			return nil, err
		}
		opts.JetStreamKey, opts.JetStreamCipher = key, server.ChaCha
		if cfg.JSCipher == "aes" {
			opts.JetStreamCipher = server.AES
		}
	}
	// Unbounded, the server takes clients until the process is out of
	// file descriptors, and then neither it nor tokend can accept or open
	// anything; past its bound a client is refused at once.
	if opts.MaxConn == 0 {
		opts.MaxConn = cfg.NATSMaxConns
	}
	opts.MaxPayload = max(opts.MaxPayload, minMaxPayload)
	opts.NoSigs = true // tokend handles the signals
	return opts, nil
}

// readStoreKey reads the JetStream encryption key of --js-key-file. The
// server derives its cipher keys from it, so any high-entropy text works;
// short keys are refused because they could be guessed.
func readStoreKey(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--js-key-file: %w", err)
	}
	key := strings.TrimSpace(string(raw))
	if len(key) < 32 {
		return "", fmt.Errorf("--js-key-file %s: the key must be at least 32 bytes (e.g. openssl rand -base64 48)", path)
	}
	return key, nil
}

func embeddedServer(cfg Config, log *slog.Logger) (*server.Server, error) {
	opts, err := embeddedOptions(cfg)
	if err != nil {
		return nil, err
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	fatal := make(chan string, 1)
	ns.SetLoggerV2(natsLogger{l: log.With("component", "nats"), fatal: fatal}, false, false, false)
	go ns.Start()
	ready := make(chan bool, 1)
	go func() { ready <- ns.ReadyForConnections(30 * time.Second) }()
	select {
	case ok := <-ready:
		if !ok {
			ns.Shutdown()
			return nil, errors.New("embedded nats did not start listening on " + net.JoinHostPort(opts.Host, strconv.Itoa(opts.Port)))
		}
		// The store is recovered before the server listens, so a key that
		// cannot decrypt it has been reported by now.
		select {
		case msg := <-fatal:
			ns.Shutdown()
			return nil, fmt.Errorf("embedded nats: %s", msg)
		default:
			return ns, nil
		}
	case msg := <-fatal:
		// e.g. the port is taken: say so now rather than after the timeout.
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats: %s", msg)
	}
}

// natsLogger routes the embedded server's log through slog; its notices are
// startup chatter, so they go to debug.
type natsLogger struct {
	l     *slog.Logger
	fatal chan<- string // gets the first reason to give up, which ends startup
}

func (n natsLogger) Noticef(format string, v ...any) { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Warnf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	n.l.Warn(msg)
	if strings.Contains(msg, "Error decrypting") {
		n.stop("the JetStream store cannot be decrypted: is --js-key-file the key it was written with?")
	}
}
func (n natsLogger) Errorf(format string, v ...any) { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Debugf(format string, v ...any) { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Tracef(format string, v ...any) { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	n.l.Error(msg)
	n.stop(msg)
}

// stop reports the first reason the server cannot serve tokend.
func (n natsLogger) stop(msg string) {
	select {
	case n.fatal <- msg:
	default:
	}
}

// waitForJetStream waits, within ctx, until JetStream answers a request
// that its cluster's leader answers (listing the streams): a cluster that
// is still forming, electing a leader or enabling the account answers no
// one for a moment (no responders, or JetStream not enabled yet), which is
// no reason to fail the start; JetStream never answering within ctx is.
func waitForJetStream(ctx context.Context, js jetstream.JetStream, log *slog.Logger) error {
	logged := false
	for {
		names := js.StreamNames(ctx)
		for range names.Name() {
		}
		err := names.Err()
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, jetstream.ErrJetStreamNotEnabled) && !errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) &&
			!errors.Is(err, nats.ErrNoResponders):
			return fmt.Errorf("jetstream: %w", err)
		case !logged:
			log.Info("waiting for JetStream to answer", "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("jetstream did not answer: %w (is JetStream enabled for this account?)", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
