package api

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/registry"
)

// Subjects of client administration, relative to the prefix; one instance
// answers each request (queue group). Secrets never travel here: the admin
// sends the SHA-256 of a secret it made, and replies show when secrets
// were made and expire, never their hashes.
const (
	// SubjectClientsPut registers a client (revision 0) or updates it.
	SubjectClientsPut = "admin.clients.put"
	// SubjectClientsGet returns one client.
	SubjectClientsGet = "admin.clients.get"
	// SubjectClientsList returns every client, without their JWKS.
	SubjectClientsList = "admin.clients.list"
	// SubjectClientsRemove unregisters a client; its history stays.
	SubjectClientsRemove = "admin.clients.remove"
	// SubjectClientsRotateSecret adds a secret; the previous ones verify
	// for a grace period.
	SubjectClientsRotateSecret = "admin.clients.rotate_secret"
	// SubjectClientsHistory returns the stored revisions of a client.
	SubjectClientsHistory = "admin.clients.history"
)

// ClientPutRequest is the body of admin.clients.put. Revision 0 creates
// the client, which must not exist; N updates it if it is still at
// revision N. An update replaces every setting: send them all.
type ClientPutRequest struct {
	ClientID string `json:"client_id"`
	Type     string `json:"type"` // public or confidential
	// AuthMethod defaults to none for public clients and to
	// client_secret_basic for confidential ones (RFC 7591).
	AuthMethod string `json:"auth_method,omitempty"`
	// Scopes and Audiences are required; an empty list allows none.
	Scopes    *[]string `json:"scopes"`
	Audiences *[]string `json:"audiences"`
	// Resources makes a confidential client a resource server for these
	// audiences: it may introspect access tokens issued for them. Absent:
	// none.
	Resources []string `json:"resources,omitempty"`
	// SSFReceiver makes a confidential client an SSF receiver: own (the
	// events of its own client) or all (every event). Absent: not one.
	SSFReceiver string `json:"ssf_receiver,omitempty"`
	// JWKS holds the client's public keys, for private_key_jwt only. On an
	// update it replaces the stored one.
	JWKS json.RawMessage `json:"jwks,omitempty"`
	// Lifetimes in Go syntax ("15m", "336h"); absent or "0s" means the
	// deployment's setting.
	AccessTTL          string `json:"access_ttl,omitempty"`
	RefreshIdleTTL     string `json:"refresh_idle_ttl,omitempty"`
	RefreshAbsoluteTTL string `json:"refresh_absolute_ttl,omitempty"`
	ReuseInterval      string `json:"reuse_interval,omitempty"`
	OnReplay           string `json:"on_replay,omitempty"` // revoke_family (default), revoke_subject, audit_only
	// DPoPBound is RFC 9449's dpop_bound_access_tokens: the client's
	// families must be bound to a DPoP key and every refresh carry a proof.
	DPoPBound bool `json:"dpop_bound_access_tokens,omitempty"`
	// DPoPRequireNonce makes the client's proofs carry a server nonce.
	DPoPRequireNonce bool `json:"dpop_require_nonce,omitempty"`
	// SecretSHA256 is the hex SHA-256 of the client's first secret:
	// required when creating a client with a secret method, and when
	// updating one that has no secret to a secret method.
	SecretSHA256 string `json:"secret_sha256,omitempty"`
	Revision     uint64 `json:"revision,omitempty"`
	By           string `json:"by,omitempty"` // who makes the change (required unless the NATS user is known)
}

// ClientRequest is the body of admin.clients.get and admin.clients.history.
type ClientRequest struct {
	ClientID string `json:"client_id"`
}

// ClientRemoveRequest is the body of admin.clients.remove; revision, if
// set, makes it conditional.
type ClientRemoveRequest struct {
	ClientID string `json:"client_id"`
	Revision uint64 `json:"revision,omitempty"`
	By       string `json:"by,omitempty"`
}

// ClientRotateSecretRequest is the body of admin.clients.rotate_secret.
type ClientRotateSecretRequest struct {
	ClientID     string `json:"client_id"`
	SecretSHA256 string `json:"secret_sha256"`
	// Grace is how long the previous secrets keep verifying, in Go syntax;
	// absent: 24h; "0s": they stop at once.
	Grace    *string `json:"grace,omitempty"`
	Revision uint64  `json:"revision,omitempty"`
	By       string  `json:"by,omitempty"`
}

// ClientView shows a registered client: never a secret or its hash.
type ClientView struct {
	ClientID   string   `json:"client_id"`
	Revision   uint64   `json:"revision"`
	Type       string   `json:"type"`
	AuthMethod string   `json:"auth_method"`
	Scopes     []string `json:"scopes"`
	Audiences  []string `json:"audiences"`
	Resources  []string `json:"resources"`
	// SSFReceiver is own or all for an SSF receiver, "" for any other client.
	SSFReceiver string `json:"ssf_receiver"`
	// Secrets lists when each secret was made and, in a rotation's grace
	// period, when it stops verifying.
	Secrets []SecretView `json:"secrets"`
	// JWKS is the client's public keys (get, put, rotate_secret; list and
	// history give only their number, in JWKSKeys).
	JWKS     json.RawMessage `json:"jwks,omitempty"`
	JWKSKeys int             `json:"jwks_keys"`
	// Lifetimes in Go syntax; "0s" means the deployment's setting.
	AccessTTL          string `json:"access_ttl"`
	RefreshIdleTTL     string `json:"refresh_idle_ttl"`
	RefreshAbsoluteTTL string `json:"refresh_absolute_ttl"`
	ReuseInterval      string `json:"reuse_interval"`
	OnReplay           string `json:"on_replay"`
	DPoPBound          bool   `json:"dpop_bound_access_tokens"`
	DPoPRequireNonce   bool   `json:"dpop_require_nonce"`
	CreatedAt          string `json:"created_at"`
	UpdatedAt          string `json:"updated_at"`
}

// SecretView describes one secret of a client.
type SecretView struct {
	CreatedAt string `json:"created_at"`
	ExpiresAt string `json:"expires_at,omitempty"`
}

// ClientChangeView is one change of the registry: the reply to put,
// remove and rotate_secret, and an entry of a client's history.
type ClientChangeView struct {
	Revision uint64 `json:"revision"`
	// Action is create, update, remove, rotate_secret, or delete for an
	// entry deleted in the bucket directly.
	Action   string      `json:"action"`
	At       string      `json:"at"`
	By       string      `json:"by,omitempty"`
	NATSUser string      `json:"nats_user,omitempty"`
	Client   *ClientView `json:"client"` // null when the change removed the client
}

// ClientList answers admin.clients.list: every client, by client id.
type ClientList struct {
	Clients []ClientView `json:"clients"`
}

// ClientHistory answers admin.clients.history: the revisions the bucket
// keeps (the last 64), oldest first.
type ClientHistory struct {
	ClientID string             `json:"client_id"`
	Changes  []ClientChangeView `json:"changes"`
}

// addClientsAdmin registers the client administration endpoints on svc,
// if the service has a registry.
func (s *Service) addClientsAdmin(svc micro.Service, prefix string) error {
	if s.Clients == nil {
		return nil
	}
	endpoints := []adminEndpoint{
		{"clients_put", SubjectClientsPut, s.putClient, nil},
		{"clients_get", SubjectClientsGet, s.getClient, nil},
		{"clients_list", SubjectClientsList, s.listClients, nil},
		{"clients_remove", SubjectClientsRemove, s.removeClient, nil},
		{"clients_rotate_secret", SubjectClientsRotateSecret, s.rotateClientSecret, nil},
		{"clients_history", SubjectClientsHistory, s.clientHistory, nil},
	}
	return s.addAdminEndpoints(svc, prefix, requestTimeout, endpoints)
}

// adminEndpoint is one administration request (keys, clients, SSF
// streams), handled with who asked.
type adminEndpoint struct {
	name, subject string
	handle        func(context.Context, []byte, registry.Actor) (any, error)
	opts          []micro.EndpointOpt
}

// addAdminEndpoints registers eps on svc, each request bounded by
// timeout. Administration is rare and quick: each group has a few slots of
// its own, apart from both commands and queries.
func (s *Service) addAdminEndpoints(svc micro.Service, prefix string, timeout time.Duration, eps []adminEndpoint) error {
	slots := make(chan struct{}, 4)
	for _, ep := range eps {
		handler := func(req micro.Request) {
			who := registry.Actor{NATSUser: requestUser(req.Headers())}
			s.async(ep.name, context.Background(), timeout, slots, func(ctx context.Context, data []byte) (any, error) {
				return ep.handle(ctx, data, who)
			}, func(string, error, time.Duration) {})(req)
		}
		if err := svc.AddEndpoint(ep.name, micro.HandlerFunc(handler), append(ep.opts, micro.WithEndpointSubject(prefix+"."+ep.subject))...); err != nil {
			return err
		}
	}
	return nil
}

// requestUser is the user named in the request's Nats-Request-Info header,
// which the NATS server sets on requests that cross accounts.
func requestUser(h micro.Headers) string {
	var info struct {
		User string `json:"user"`
	}
	if v := h.Get("Nats-Request-Info"); v == "" || json.Unmarshal([]byte(v), &info) != nil {
		return ""
	}
	return info.User
}

func (s *Service) putClient(ctx context.Context, data []byte, who registry.Actor) (any, error) {
	var in ClientPutRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	c, err := clientSettings(in)
	if err != nil {
		return nil, err
	}
	// The stream keeps events, and its MaxAge backstop is sized, for
	// families living at most the deployment's absolute lifetime.
	if limit := s.Tokens.Policy().AbsoluteTTL; c.RefreshAbsoluteTTL > limit {
		return nil, domain.Errorf(domain.EInvalidRequest, "refresh_absolute_ttl %v is longer than this deployment's --refresh-absolute-ttl %v",
			c.RefreshAbsoluteTTL, limit)
	}
	// An access token must not outlive its signing key, which stays
	// published for the deployment's access lifetime after it retires.
	if limit := s.Access.MaxTTL(); c.AccessTTL > limit {
		return nil, domain.Errorf(domain.EInvalidRequest, "access_ttl %v is longer than this deployment's --access-ttl %v", c.AccessTTL, limit)
	}
	who.By = in.By
	e, err := s.Clients.Put(ctx, c, in.SecretSHA256, in.Revision, who)
	if err != nil {
		return nil, err
	}
	return clientChange(e, true), nil
}

// clientSettings reads the settings of a put request.
func clientSettings(in ClientPutRequest) (domain.Client, error) {
	if in.Scopes == nil {
		return domain.Client{}, domain.Errorf(domain.EInvalidRequest, "scopes is required: the scopes the client may be granted ([] for none)")
	}
	if in.Audiences == nil {
		return domain.Client{}, domain.Errorf(domain.EInvalidRequest, "audiences is required: the resources the client may be granted ([] for none)")
	}
	c := domain.Client{ID: in.ClientID, Type: domain.ClientType(in.Type), AuthMethod: domain.AuthMethod(in.AuthMethod),
		Scopes: *in.Scopes, Audiences: *in.Audiences, Resources: in.Resources, Receiver: domain.ReceiverRole(in.SSFReceiver),
		OnReplay: domain.ReplayAction(in.OnReplay), DPoPBound: in.DPoPBound, DPoPRequireNonce: in.DPoPRequireNonce}
	if string(in.JWKS) != "null" {
		c.JWKS = in.JWKS
	}
	for _, d := range []struct {
		field string
		value string
		into  *time.Duration
	}{
		{"access_ttl", in.AccessTTL, &c.AccessTTL}, {"refresh_idle_ttl", in.RefreshIdleTTL, &c.RefreshIdleTTL},
		{"refresh_absolute_ttl", in.RefreshAbsoluteTTL, &c.RefreshAbsoluteTTL}, {"reuse_interval", in.ReuseInterval, &c.ReuseInterval},
	} {
		var err error
		if *d.into, err = parseDuration(d.field, d.value); err != nil {
			return domain.Client{}, err
		}
	}
	return c, nil
}

func parseDuration(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, domain.Errorf(domain.EInvalidRequest, "%s must be a duration such as 90s, 15m or 336h", field)
	}
	return d, nil
}

func (s *Service) getClient(ctx context.Context, data []byte, _ registry.Actor) (any, error) {
	var in ClientRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	e, err := s.Clients.Get(ctx, in.ClientID)
	if err != nil {
		return nil, err
	}
	return clientView(e, true), nil
}

func (s *Service) listClients(ctx context.Context, data []byte, _ registry.Actor) (any, error) {
	var in struct{}
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	entries, err := s.Clients.List(ctx)
	if err != nil {
		return nil, err
	}
	out := ClientList{Clients: make([]ClientView, 0, len(entries))}
	for _, e := range entries {
		out.Clients = append(out.Clients, clientView(e, false))
	}
	return out, nil
}

func (s *Service) removeClient(ctx context.Context, data []byte, who registry.Actor) (any, error) {
	var in ClientRemoveRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	who.By = in.By
	e, err := s.Clients.Remove(ctx, in.ClientID, in.Revision, who)
	if err != nil {
		return nil, err
	}
	return clientChange(e, false), nil
}

func (s *Service) rotateClientSecret(ctx context.Context, data []byte, who registry.Actor) (any, error) {
	var in ClientRotateSecretRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	grace := domain.DefaultSecretGrace
	if in.Grace != nil {
		var err error
		if grace, err = time.ParseDuration(*in.Grace); err != nil {
			return nil, domain.Errorf(domain.EInvalidRequest, "grace must be a duration such as 0s, 1h or 24h")
		}
	}
	who.By = in.By
	e, err := s.Clients.RotateSecret(ctx, in.ClientID, in.SecretSHA256, grace, in.Revision, who)
	if err != nil {
		return nil, err
	}
	return clientChange(e, true), nil
}

func (s *Service) clientHistory(ctx context.Context, data []byte, _ registry.Actor) (any, error) {
	var in ClientRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	entries, err := s.Clients.History(ctx, in.ClientID)
	if err != nil {
		return nil, err
	}
	out := ClientHistory{ClientID: in.ClientID, Changes: make([]ClientChangeView, 0, len(entries))}
	for _, e := range entries {
		// Without the JWKS: 64 revisions of one would outgrow a NATS message.
		out.Changes = append(out.Changes, clientChange(e, false))
	}
	return out, nil
}

func clientChange(e registry.ClientEntry, withJWKS bool) ClientChangeView {
	v := ClientChangeView{Revision: e.Revision, Action: e.Change.Action, By: e.Change.By, NATSUser: e.Change.NATSUser}
	if !e.Change.At.IsZero() {
		v.At = rfc3339(e.Change.At)
	}
	if !e.Removed {
		c := clientView(e, withJWKS)
		v.Client = &c
	}
	return v
}

func clientView(e registry.ClientEntry, withJWKS bool) ClientView {
	c := e.Client
	v := ClientView{ClientID: c.ID, Revision: e.Revision, Type: string(c.Type), AuthMethod: string(c.AuthMethod),
		Scopes: nonNil(c.Scopes), Audiences: nonNil(c.Audiences), Resources: nonNil(c.Resources), SSFReceiver: string(c.Receiver), Secrets: make([]SecretView, 0, len(c.Secrets)),
		AccessTTL: c.AccessTTL.String(), RefreshIdleTTL: c.RefreshIdleTTL.String(), RefreshAbsoluteTTL: c.RefreshAbsoluteTTL.String(),
		ReuseInterval: c.ReuseInterval.String(), OnReplay: string(c.OnReplay), DPoPBound: c.DPoPBound, DPoPRequireNonce: c.DPoPRequireNonce,
		CreatedAt: rfc3339(c.CreatedAt), UpdatedAt: rfc3339(c.UpdatedAt)}
	for _, sec := range c.Secrets {
		sv := SecretView{CreatedAt: rfc3339(sec.CreatedAt)}
		if !sec.ExpiresAt.IsZero() {
			sv.ExpiresAt = rfc3339(sec.ExpiresAt)
		}
		v.Secrets = append(v.Secrets, sv)
	}
	if len(c.JWKS) > 0 {
		var set struct {
			Keys []json.RawMessage `json:"keys"`
		}
		json.Unmarshal(c.JWKS, &set) // validated when stored
		v.JWKSKeys = len(set.Keys)
		if withJWKS {
			v.JWKS = c.JWKS
		}
	}
	return v
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
