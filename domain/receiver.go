package domain

// ReceiverRole makes a registered client an SSF receiver (Shared Signals
// Framework 1.0): which of the deployment's security events its streams
// may carry.
type ReceiverRole string

const (
	// ReceiverNone: not a receiver (the default, and every client stored
	// before receivers existed).
	ReceiverNone ReceiverRole = ""
	// ReceiverOwn sees the events of its own families and its own client's
	// revocation (and the verification and updates of its own streams,
	// which the stream's owner decides, not this role).
	ReceiverOwn ReceiverRole = "own"
	// ReceiverAll sees every event of the deployment: a SIEM.
	ReceiverAll ReceiverRole = "all"
)

// The OAuth scopes of the SSF endpoints (CAEP interoperability profile 1.0,
// "OAuth Scopes": the ssf prefix is reserved for them).
const (
	// ScopeSSFRead reads stream configuration and status.
	ScopeSSFRead = "ssf.read"
	// ScopeSSFManage changes streams and polls their events; it includes
	// ScopeSSFRead.
	ScopeSSFManage = "ssf.manage"
)

// ReceiverScopes are the scopes a receiver's access token may carry, and
// the ones it gets when it asks for none.
var ReceiverScopes = []string{ScopeSSFRead, ScopeSSFManage}

// IsReceiver reports whether c is an SSF receiver.
func (c Client) IsReceiver() bool { return c.Receiver != ReceiverNone }

// MaySee reports whether c, as a receiver, may see an event about a family
// or revocation of client ownerClientID.
func (c Client) MaySee(ownerClientID string) bool {
	switch c.Receiver {
	case ReceiverAll:
		return true
	case ReceiverOwn:
		return ownerClientID == c.ID
	}
	return false
}

// MaySeeDeployment reports whether c, as a receiver, may see an event
// about no single client: a subject's revocation across clients, a key's
// revocation.
func (c Client) MaySeeDeployment() bool { return c.Receiver == ReceiverAll }

// ParseReceiverScope reads the scope a receiver asks for in the
// client_credentials grant: a subset of ReceiverScopes, all of them when
// s is empty. Anything else is EInvalidScope (RFC 6749 section 5.2); a
// malformed scope string EInvalidRequest.
func ParseReceiverScope(s string) ([]string, error) {
	scope, err := ParseScope(s)
	if err != nil {
		return nil, err
	}
	if len(scope) == 0 {
		return append([]string(nil), ReceiverScopes...), nil
	}
	for _, x := range scope {
		if !contains(ReceiverScopes, x) {
			return nil, Errorf(EInvalidScope, "scope %q is not an SSF scope: ask for %s", truncate(x), ScopeString(ReceiverScopes))
		}
	}
	return scope, nil
}

// ReceiverScopeAllows reports whether a receiver token granted scope may
// do what needs need: need itself, or ScopeSSFManage for ScopeSSFRead.
func ReceiverScopeAllows(scope []string, need string) bool {
	return contains(scope, need) || need == ScopeSSFRead && contains(scope, ScopeSSFManage)
}

func (c Client) validReceiver() error {
	switch c.Receiver {
	case ReceiverNone:
		return nil
	case ReceiverOwn, ReceiverAll:
	default:
		return Errorf(EInvalidRequest, "ssf_receiver must be own or all (or absent: not a receiver)")
	}
	if c.Type != ClientConfidential {
		// A receiver authenticates for its access token (client_credentials).
		return Errorf(EInvalidRequest, "ssf_receiver goes with confidential clients only: a public client cannot authenticate")
	}
	return nil
}
