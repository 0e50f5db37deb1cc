// Package client calls tokend over NATS request-reply: the commands
// (issue, refresh, revoke), the queries (introspect, family, audit), the
// JWKS, and any other subject through Request.
//
//	c := client.New(nc, "") // default prefix "tokens"
//	tok, err := c.Issue(ctx, wire.IssueRequest{Subject: "user-42", ClientID: "web-app"})
//	switch {
//	case client.Terminal(err): // errors.Is(err, client.ErrInvalidGrant), …: sign in again
//	case client.Transient(err): // back off (client.RetryAfter(err)) and retry
//	}
//
// A service that holds users' sessions gets its access tokens from a
// Source, one per session, which caches them per audience and scope,
// renews them ahead of expiry, refreshes once for all concurrent callers,
// and keeps the refresh token in a Store shared by the service's replicas
// (a KVStore in a JetStream bucket, or a MemoryStore):
//
//	store := client.NewKVStore(kv) // see KVStore for how to protect the bucket
//	src := client.NewSource(c, store, sessionID, client.Options{
//		OnTerminal: func(error) { signOut(sessionID) },
//	})
//	err := src.Begin(ctx, "web-app", issued) // after the login's Issue
//	…
//	at, err := src.Token(ctx, "https://api.example.com", "api:read")
//	req.Header.Set("Authorization", "Bearer "+at.Token)
//	// or: httpClient := oauth2.NewClient(ctx, src.OAuth2("https://api.example.com", "api:read"))
//
// With DPoP (RFC 9449) the refresh tokens, and the access tokens, are
// bound to a key the service holds, so that a copy of them is of no use
// without it: issue the family with the key's thumbprint, and give the
// Source the key and the URL of tokend's token endpoint, which every proof
// names. The Source signs a new proof for each refresh attempt and
// answers tokend's nonce requests; the access tokens then have TokenType
// DPoP and go to resource servers with a proof of their own:
//
//	key, err := client.NewDPoP(nil) // a new P-256 key; or a KMS's crypto.Signer
//	issued, err := c.Issue(ctx, wire.IssueRequest{…, DPoPJKT: key.JKT()})
//	src := client.NewSource(c, store, sessionID, client.Options{
//		DPoP: key, DPoPURL: "https://tokend.example/oauth2/token", // tokend's --issuer + /oauth2/token
//	})
//	at, err := src.Token(ctx, "https://api.example.com")
//	err = key.Authorize(req, at) // Authorization: DPoP …, and the DPoP header
//
// Sessions does the same per browser session with SessionConfig.DPoPKeys
// and StartDPoP.
//
// A backend-for-frontend with cookie sessions uses Sessions, which keeps a
// Source per browser session behind a signed cookie and hands handlers a
// valid access token (AccessTokenFrom); examples/bff is a runnable one.
//
// Connect with nats.ReconnectBufSize(-1): a request buffered while the
// connection is down is sent after the reconnect, maybe after the caller
// retried and moved on, and a late copy of an old refresh is a replay that
// revokes the family.
package client

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api/wire"
)

// DefaultPrefix is tokend's default subject prefix.
const DefaultPrefix = "tokens"

// DefaultTimeout bounds a request whose context has no deadline. tokend
// answers every command within 5 s, so this leaves room for the network.
const DefaultTimeout = 10 * time.Second

// Subject suffixes of the tokend endpoints, relative to the prefix.
const (
	SubjectIssue   = "cmd.issue"
	SubjectRefresh = "cmd.refresh"
	SubjectRevoke  = "cmd.revoke"
	SubjectKeys    = "keys"

	SubjectIntrospect = "query.introspect"
	SubjectFamily     = "query.family"
	SubjectAudit      = "query.audit"
)

// Contract error codes that a caller may retry.
const (
	CodeTemporarilyUnavailable = "temporarily_unavailable"
	CodeServerError            = "server_error"
)

// CodeNotFound answers Family for an unknown family id.
const CodeNotFound = "not_found"

// Client sends requests to one tokend deployment. It is safe for concurrent
// use; it does not own the connection.
type Client struct {
	nc     *nats.Conn
	prefix string

	// Timeout applies when a request's context has no deadline;
	// DefaultTimeout if zero.
	Timeout time.Duration
}

// New returns a client for the tokend service reachable through nc, with
// subjects under prefix ("tokens" when empty).
func New(nc *nats.Conn, prefix string) *Client {
	prefix = strings.TrimSuffix(prefix, ".")
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Client{nc: nc, prefix: prefix}
}

// Prefix returns the subject prefix in use.
func (c *Client) Prefix() string { return c.prefix }

// Subject returns the full subject for suffix, e.g. "tokens.cmd.issue".
func (c *Client) Subject(suffix string) string { return c.prefix + "." + suffix }

// Issue starts a new token family.
func (c *Client) Issue(ctx context.Context, req wire.IssueRequest) (wire.TokenReply, error) {
	return call[wire.TokenReply](ctx, c, SubjectIssue, req)
}

// Refresh exchanges a refresh token for a new one (rotation).
func (c *Client) Refresh(ctx context.Context, req wire.RefreshRequest) (wire.TokenReply, error) {
	return call[wire.TokenReply](ctx, c, SubjectRefresh, req)
}

// Revoke revokes the families selected by req.
func (c *Client) Revoke(ctx context.Context, req wire.RevokeRequest) (wire.RevokeReply, error) {
	return call[wire.RevokeReply](ctx, c, SubjectRevoke, req)
}

// Introspect reports whether req.RefreshToken is its family's current token
// in a live family (RFC 7662); an unknown or dead token is Active: false, not
// an error. With req.MinSeq set the answer waits for the read model to reach
// it, or fails with temporarily_unavailable after 2 s.
func (c *Client) Introspect(ctx context.Context, req wire.IntrospectRequest) (wire.Introspection, error) {
	return call[wire.Introspection](ctx, c, SubjectIntrospect, req)
}

// Family returns a family and its chain of generations. An unknown id is an
// *Error with Code CodeNotFound.
func (c *Client) Family(ctx context.Context, req wire.FamilyRequest) (wire.FamilyView, error) {
	return call[wire.FamilyView](ctx, c, SubjectFamily, req)
}

// Audit returns one page of the audit events matching req, in ascending seq.
// For the next page, send req again with AfterSeq set to the reply's
// NextAfterSeq; an empty page is the end.
func (c *Client) Audit(ctx context.Context, req wire.AuditRequest) (wire.AuditPage, error) {
	return call[wire.AuditPage](ctx, c, SubjectAudit, req)
}

// Keys returns the JWKS that verifies access tokens (EdDSA keys) and the
// Security Event Tokens of SSF streams (RS256 keys), as received.
func (c *Client) Keys(ctx context.Context) (json.RawMessage, error) {
	return call[json.RawMessage](ctx, c, SubjectKeys, nil)
}

// call sends req to <prefix>.<subjectSuffix> and returns the answer decoded
// into a Reply: the typed form of Request that the endpoint methods share.
func call[Reply any](ctx context.Context, c *Client, subjectSuffix string, req any) (Reply, error) {
	var reply Reply
	err := c.Request(ctx, subjectSuffix, req, &reply)
	return reply, err
}

// Request sends req to <prefix>.<subjectSuffix> and decodes the answer into
// reply.
//
// req is encoded with encoding/json, except that a json.RawMessage or []byte
// is sent as is and nil sends {}. reply may be nil (the answer is dropped), a
// *json.RawMessage or *[]byte (it receives a copy of the body exactly as
// received), or anything encoding/json decodes into.
//
// The request tells tokend how long the caller will wait (from ctx's
// deadline, or Timeout), so a request that waited too long in tokend is
// answered temporarily_unavailable instead of being run after the caller
// has gone.
//
// An error answer from the service is returned as *Error. Transport failures
// (no responders, timeout, closed connection) are returned wrapped, with the
// subject, so errors.Is(err, nats.ErrNoResponders) and
// errors.Is(err, context.DeadlineExceeded) work.
func (c *Client) Request(ctx context.Context, subjectSuffix string, req any, reply any) error {
	subject := c.Subject(subjectSuffix)
	data, err := encode(req)
	if err != nil {
		return fmt.Errorf("%s: encode request: %w", subject, err)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if _, ok := ctx.Deadline(); !ok {
		timeout := c.Timeout
		if timeout <= 0 {
			timeout = DefaultTimeout
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	// tokend does not start a request it cannot start in the time the
	// caller has left, which it learns from the time left (the clocks need
	// not agree) and the deadline itself (which also covers time the
	// request spent queued in a frozen tokend, if the clocks agree within
	// a second).
	deadline, _ := ctx.Deadline()
	out := nats.NewMsg(subject)
	out.Data = data
	out.Header.Set(wire.HeaderTimeout, strconv.FormatInt(max(time.Until(deadline).Milliseconds(), 0), 10))
	out.Header.Set(wire.HeaderDeadline, strconv.FormatInt(deadline.UnixMilli(), 10))
	msg, err := c.nc.RequestMsgWithContext(ctx, out)
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	if e := responseError(msg); e != nil {
		return e
	}
	return decode(msg.Data, reply, subject)
}

func encode(req any) ([]byte, error) {
	switch r := req.(type) {
	case nil:
		return []byte("{}"), nil
	case json.RawMessage:
		return r, nil
	case []byte:
		return r, nil
	}
	return json.Marshal(req)
}

func decode(data []byte, reply any, subject string) error {
	switch r := reply.(type) {
	case nil:
		return nil
	case *json.RawMessage:
		*r = append(json.RawMessage(nil), data...)
		return nil
	case *[]byte:
		*r = append([]byte(nil), data...)
		return nil
	}
	if err := json.Unmarshal(data, reply); err != nil {
		return fmt.Errorf("%s: decode reply: %w", subject, err)
	}
	return nil
}

// Error is a failure answered by the service (see the contract's error table).
type Error struct {
	Code         string // contract error code, e.g. "invalid_grant"
	Description  string // error_description, safe to show
	RetryAfterMs int64  // retry_after_ms hint, 0 if none
	Status       string // the Nats-Service-Error-Code header, e.g. "400"
	DPoPNonce    string // with use_dpop_nonce: the nonce to put in a new DPoP proof
}

func (e *Error) Error() string {
	if e.Description == "" {
		return e.Code
	}
	return e.Code + ": " + e.Description
}

// RetryAfter returns the service's back-off hint, 0 if none.
func (e *Error) RetryAfter() time.Duration { return time.Duration(e.RetryAfterMs) * time.Millisecond }

// responseError returns the *Error carried by msg, or nil for a success.
func responseError(msg *nats.Msg) *Error {
	status := msg.Header.Get(micro.ErrorCodeHeader)
	if status == "" {
		return nil
	}
	e := &Error{Status: status}
	var body wire.ErrorReply
	if json.Unmarshal(msg.Data, &body) == nil {
		e.Code, e.Description, e.RetryAfterMs, e.DPoPNonce = body.Error, body.Description, body.RetryAfterMs, body.DPoPNonce
	}
	// tokend puts the error code in the error header; a body without one
	// (a proxy's, an older server's) still leaves the header to go by.
	header := msg.Header.Get(micro.ErrorHeader)
	if e.Code == "" && contractCode(header) {
		e.Code = header
	}
	if e.Code == "" {
		e.Code = codeForStatus(status)
	}
	if e.Description == "" {
		e.Description = header
	}
	return e
}

func contractCode(s string) bool {
	_, ok := sentinels[s]
	return ok
}

// codeForStatus guesses the contract code of an error without a usable body.
func codeForStatus(status string) string {
	n, _ := strconv.Atoi(status)
	switch {
	case n == 404:
		return CodeNotFound
	case n == 503:
		return CodeTemporarilyUnavailable
	case n >= 400 && n < 500:
		return "invalid_request"
	}
	return CodeServerError
}
