// Package ssfreceiver is a small receiver of the OpenID Shared Signals
// Framework (SSF 1.0), written from the specifications alone: it discovers
// a transmitter (SSF 1.0 section 7), manages its streams (section 8),
// verifies the Security Event Tokens it is sent (RFC 8417, SSF 1.0
// section 4), and takes them pushed (RFC 8935) or polled (RFC 8936).
//
// It knows nothing of any transmitter in particular, tokend included: it
// uses the standard library, golang.org/x/oauth2 for the receiver's access
// token (client_credentials, as the CAEP interoperability profile 1.0
// asks) and github.com/lestrrat-go/jwx for JOSE. Use it as a worked
// example, or as a start for a receiver of your own.
package ssfreceiver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// Delivery methods (SSF 1.0 section 6.1).
const (
	DeliveryPush = "urn:ietf:rfc:8935"
	DeliveryPoll = "urn:ietf:rfc:8936"
)

// Config says which transmitter a receiver talks to, and as whom.
type Config struct {
	// Issuer is the transmitter's issuer, from a trusted source (SSF 1.0
	// section 7.2): every document and SET must name exactly it.
	Issuer string
	// ClientID and ClientSecret authenticate the receiver at the
	// authorization server's token endpoint (RFC 6749 section 4.4).
	ClientID, ClientSecret string
	// Scopes to ask for; none asks for the server's default.
	Scopes []string
	// Audience is what the transmitter puts in the aud of this receiver's
	// streams and SETs, agreed out of band (SSF 1.0 section 4.1.8).
	Audience string
	// HTTPClient makes every request; nil is http.DefaultClient.
	HTTPClient *http.Client
}

// TransmitterConfig is the transmitter configuration metadata (SSF 1.0
// section 7.1); members this receiver does not use are left out.
type TransmitterConfig struct {
	SpecVersion              string   `json:"spec_version"`
	Issuer                   string   `json:"issuer"`
	JWKSURI                  string   `json:"jwks_uri"`
	DeliveryMethodsSupported []string `json:"delivery_methods_supported"`
	ConfigurationEndpoint    string   `json:"configuration_endpoint"`
	StatusEndpoint           string   `json:"status_endpoint"`
	AddSubjectEndpoint       string   `json:"add_subject_endpoint"`
	RemoveSubjectEndpoint    string   `json:"remove_subject_endpoint"`
	VerificationEndpoint     string   `json:"verification_endpoint"`
	DefaultSubjects          string   `json:"default_subjects"`
}

// Receiver is a receiver connected to one transmitter: it calls the
// stream management API with its bearer token and verifies the SETs of
// its streams.
type Receiver struct {
	Transmitter TransmitterConfig
	// Verifier checks the SETs of this receiver's streams.
	Verifier *Verifier
	cfg      Config
	api      *http.Client // adds the bearer token
}

// HTTPError is a transmitter's refusal: its status and, when the body is
// the usual OAuth error JSON, its error code and description.
type HTTPError struct {
	Status      int
	Code        string `json:"error"`
	Description string `json:"error_description"`
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("transmitter answered %d %s: %s", e.Status, e.Code, e.Description)
}

// Connect discovers the transmitter of cfg.Issuer and its authorization
// server, and prepares the receiver's access token (fetched at the first
// request and renewed when it expires).
func Connect(ctx context.Context, cfg Config) (*Receiver, error) {
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	r := &Receiver{cfg: cfg}
	// SSF 1.0 section 7.2: the metadata is at the issuer with
	// /.well-known/ssf-configuration inserted before its path.
	if err := getJSON(ctx, cfg.HTTPClient, wellKnown(cfg.Issuer, "ssf-configuration"), &r.Transmitter); err != nil {
		return nil, fmt.Errorf("SSF configuration: %w", err)
	}
	// SSF 1.0 section 7.2.4: the issuer must be identical to the one asked.
	if r.Transmitter.Issuer != cfg.Issuer {
		return nil, fmt.Errorf("SSF configuration names issuer %q, not %q", r.Transmitter.Issuer, cfg.Issuer)
	}
	// RFC 8414 section 3: the authorization server's metadata, same rule.
	var as struct {
		Issuer        string `json:"issuer"`
		TokenEndpoint string `json:"token_endpoint"`
	}
	if err := getJSON(ctx, cfg.HTTPClient, wellKnown(cfg.Issuer, "oauth-authorization-server"), &as); err != nil {
		return nil, fmt.Errorf("authorization server metadata: %w", err)
	}
	if as.Issuer != cfg.Issuer || as.TokenEndpoint == "" {
		return nil, fmt.Errorf("authorization server metadata: issuer %q, token_endpoint %q", as.Issuer, as.TokenEndpoint)
	}
	cc := clientcredentials.Config{ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret, TokenURL: as.TokenEndpoint, Scopes: cfg.Scopes}
	// The token source outlives ctx: it renews the token for later calls.
	tctx := context.WithValue(context.Background(), oauth2.HTTPClient, cfg.HTTPClient)
	r.api = oauth2.NewClient(tctx, cc.TokenSource(tctx))
	r.api.Timeout = cfg.HTTPClient.Timeout
	r.Verifier = NewVerifier(cfg.Issuer, cfg.Audience, r.Transmitter.JWKSURI, cfg.HTTPClient)
	return r, nil
}

// wellKnown inserts /.well-known/<name> between the issuer's host and its
// path, a terminating "/" removed (SSF 1.0 section 7.2, RFC 8414 section 3).
func wellKnown(issuer, name string) string {
	u, err := url.Parse(issuer)
	if err != nil {
		return issuer
	}
	u.Path = "/.well-known/" + name + strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u.String()
}

func getJSON(ctx context.Context, hc *http.Client, u string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	return do(hc, req, out, http.StatusOK)
}

// call sends a management request with the receiver's bearer token; body,
// when not nil, is sent as JSON, and the answer decoded into out (when
// not nil) if its status is one of ok.
func (r *Receiver) call(ctx context.Context, method, u string, body, out any, ok ...int) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	return do(r.api, req, out, ok...)
}

func do(hc *http.Client, req *http.Request, out any, ok ...int) error {
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if !slices.Contains(ok, resp.StatusCode) {
		herr := &HTTPError{Status: resp.StatusCode}
		_ = json.Unmarshal(raw, herr) // a body that is no OAuth error leaves the status alone
		return herr
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), err)
	}
	return nil
}

// IsNotFound reports whether err is a transmitter's 404: for a stream,
// SSF 1.0 section 8.1.1 uses it for one that is not the receiver's.
func IsNotFound(err error) bool {
	var herr *HTTPError
	return errors.As(err, &herr) && herr.Status == http.StatusNotFound
}
