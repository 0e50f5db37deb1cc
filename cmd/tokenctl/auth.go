package main

import (
	"errors"
	"flag"

	"github.com/nats-io/nats.go"
)

// authFlags are the ways to log in to a locked-down NATS deployment (see
// ops/nats/auth.conf): credentials, TLS, and the role's private inbox prefix.
type authFlags struct {
	creds, nkey            string
	tlsCA, tlsCert, tlsKey string
	inboxPrefix            string
}

func (a *authFlags) declare(fs *flag.FlagSet) {
	fs.StringVar(&a.creds, "creds", "", "authenticate with this NATS credentials (JWT) `FILE`")
	fs.StringVar(&a.nkey, "nkey", "", "authenticate with the nkey seed in `FILE`")
	fs.StringVar(&a.tlsCA, "tls-ca", "", "verify the server against the CA certificates in this PEM `FILE`")
	fs.StringVar(&a.tlsCert, "tls-cert", "", "client certificate PEM `FILE` for mutual TLS (with --tls-key)")
	fs.StringVar(&a.tlsKey, "tls-key", "", "private key PEM `FILE` of --tls-cert")
	fs.StringVar(&a.inboxPrefix, "inbox-prefix", "", "reply subject `PREFIX` your NATS user may subscribe to, e.g. _INBOX_admin (default _INBOX)")
}

func (a *authFlags) options() ([]nats.Option, error) {
	var opts []nats.Option
	if a.creds != "" {
		opts = append(opts, nats.UserCredentials(a.creds))
	}
	if a.nkey != "" {
		opt, err := nats.NkeyOptionFromSeed(a.nkey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, opt)
	}
	if a.tlsCA != "" {
		opts = append(opts, nats.RootCAs(a.tlsCA))
	}
	if (a.tlsCert == "") != (a.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if a.tlsCert != "" {
		opts = append(opts, nats.ClientCert(a.tlsCert, a.tlsKey))
	}
	if a.inboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(a.inboxPrefix))
	}
	return opts, nil
}
