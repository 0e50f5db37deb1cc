package signals

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"slices"
	"unicode/utf8"

	"github.com/tokend/tokend/domain"
)

// Subject is a subject identifier (RFC 9493 section 3, and the formats SSF
// 1.0 section 3.4 adds) or an SSF complex subject (SSF 1.0 section 3.3):
// Format says which, and which members are set.
type Subject struct {
	Format string `json:"format"`

	// Members of the simple formats.
	Email       string    `json:"email,omitempty"`        // email
	PhoneNumber string    `json:"phone_number,omitempty"` // phone_number
	Iss         string    `json:"iss,omitempty"`          // iss_sub, jwt_id
	Sub         string    `json:"sub,omitempty"`          // iss_sub
	ID          string    `json:"id,omitempty"`           // opaque
	URI         string    `json:"uri,omitempty"`          // account, uri
	URL         string    `json:"url,omitempty"`          // did
	JTI         string    `json:"jti,omitempty"`          // jwt_id
	Issuer      string    `json:"issuer,omitempty"`       // saml_assertion_id
	AssertionID string    `json:"assertion_id,omitempty"` // saml_assertion_id
	IPAddresses []string  `json:"ip-addresses,omitempty"` // ip-addresses
	Identifiers []Subject `json:"identifiers,omitempty"`  // aliases

	// Members of a complex subject, each a simple identifier.
	User        *Subject `json:"user,omitempty"`
	Device      *Subject `json:"device,omitempty"`
	Session     *Subject `json:"session,omitempty"`
	Application *Subject `json:"application,omitempty"`
	Tenant      *Subject `json:"tenant,omitempty"`
	OrgUnit     *Subject `json:"org_unit,omitempty"`
	Group       *Subject `json:"group,omitempty"`
}

// Subject identifier formats.
const (
	FormatAccount     = "account"
	FormatAliases     = "aliases"
	FormatDID         = "did"
	FormatEmail       = "email"
	FormatIssSub      = "iss_sub"
	FormatOpaque      = "opaque"
	FormatPhoneNumber = "phone_number"
	FormatURI         = "uri"
	FormatJWTID       = "jwt_id"
	FormatSAML        = "saml_assertion_id"
	FormatIPAddresses = "ip-addresses"
	FormatComplex     = "complex"
)

// Limits of a subject a receiver sends.
const (
	// MaxSubjectBytes bounds a subject's JSON.
	MaxSubjectBytes = 1024
	// maxMemberBytes bounds one string member.
	maxMemberBytes = 256
	// maxListMembers bounds the addresses of ip-addresses and the
	// identifiers of aliases.
	maxListMembers = 8
)

// simpleMembers are the members each simple format has, all required.
var simpleMembers = map[string][]string{
	FormatAccount:     {"uri"},
	FormatDID:         {"url"},
	FormatEmail:       {"email"},
	FormatIssSub:      {"iss", "sub"},
	FormatOpaque:      {"id"},
	FormatPhoneNumber: {"phone_number"},
	FormatURI:         {"uri"},
	FormatJWTID:       {"iss", "jti"},
	FormatSAML:        {"issuer", "assertion_id"},
	FormatIPAddresses: {"ip-addresses"},
	FormatAliases:     {"identifiers"},
}

// IssSub returns the iss_sub identifier of sub at issuer iss.
func IssSub(iss, sub string) Subject { return Subject{Format: FormatIssSub, Iss: iss, Sub: sub} }

// Opaque returns the opaque identifier id.
func Opaque(id string) Subject { return Subject{Format: FormatOpaque, ID: id} }

// members returns the names of the simple members s has set.
func (s Subject) members() []string {
	var out []string
	for _, m := range []struct {
		name string
		set  bool
	}{
		{"email", s.Email != ""}, {"phone_number", s.PhoneNumber != ""}, {"iss", s.Iss != ""}, {"sub", s.Sub != ""},
		{"id", s.ID != ""}, {"uri", s.URI != ""}, {"url", s.URL != ""}, {"jti", s.JTI != ""}, {"issuer", s.Issuer != ""},
		{"assertion_id", s.AssertionID != ""}, {"ip-addresses", s.IPAddresses != nil}, {"identifiers", s.Identifiers != nil},
	} {
		if m.set {
			out = append(out, m.name)
		}
	}
	return out
}

// complexMembers returns the members of a complex subject by name, nil
// where unset.
func (s Subject) complexMembers() map[string]*Subject {
	return map[string]*Subject{"user": s.User, "device": s.Device, "session": s.Session, "application": s.Application,
		"tenant": s.Tenant, "org_unit": s.OrgUnit, "group": s.Group}
}

func (s Subject) hasComplexMembers() bool {
	for _, m := range s.complexMembers() {
		if m != nil {
			return true
		}
	}
	return false
}

// DecodeSubject parses a subject a receiver sent and validates it; a
// member tokend does not know is an error, since it could never match.
func DecodeSubject(data []byte) (Subject, error) {
	if len(data) > MaxSubjectBytes {
		return Subject{}, domain.Errorf(domain.EInvalidRequest, "subject is longer than %d bytes", MaxSubjectBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s Subject
	if err := dec.Decode(&s); err != nil {
		return Subject{}, domain.Errorf(domain.EInvalidRequest, "subject is not a subject identifier this transmitter knows: %v", err)
	}
	return s, s.Validate()
}

// Validate reports whether s is a well-formed subject: a known format with
// exactly its members (a complex subject: one or more simple ones), short
// printable strings, at most MaxSubjectBytes of JSON. Errors are
// invalid_request.
func (s Subject) Validate() error {
	if err := s.validate(true); err != nil {
		return err
	}
	data, err := json.Marshal(s)
	if err != nil || len(data) > MaxSubjectBytes {
		return domain.Errorf(domain.EInvalidRequest, "subject is longer than %d bytes", MaxSubjectBytes)
	}
	return nil
}

func (s Subject) validate(complexAllowed bool) error {
	if s.Format == FormatComplex {
		if !complexAllowed {
			return domain.Errorf(domain.EInvalidRequest, "a complex subject's members are simple subject identifiers")
		}
		if len(s.members()) > 0 || !s.hasComplexMembers() {
			return domain.Errorf(domain.EInvalidRequest, "a complex subject has members such as user, session or application, and nothing else")
		}
		for name, m := range s.complexMembers() {
			if m == nil {
				continue
			}
			if err := m.validate(false); err != nil {
				return domain.Errorf(domain.EInvalidRequest, "subject member %s: %s", name, domain.ErrorMessage(err))
			}
		}
		return nil
	}
	want, ok := simpleMembers[s.Format]
	if !ok {
		return domain.Errorf(domain.EInvalidRequest, "subject format %q is unknown", truncate(s.Format, 40))
	}
	if s.hasComplexMembers() || !slices.Equal(s.members(), sorted(want)) {
		return domain.Errorf(domain.EInvalidRequest, "a subject of format %s has exactly the members %v", s.Format, want)
	}
	for _, v := range []string{s.Email, s.PhoneNumber, s.Iss, s.Sub, s.ID, s.URI, s.URL, s.JTI, s.Issuer, s.AssertionID} {
		if v != "" && !validMember(v) {
			return domain.Errorf(domain.EInvalidRequest, "subject members are printable strings of at most %d bytes", maxMemberBytes)
		}
	}
	switch s.Format {
	case FormatIPAddresses:
		if len(s.IPAddresses) == 0 || len(s.IPAddresses) > maxListMembers {
			return domain.Errorf(domain.EInvalidRequest, "ip-addresses holds 1 to %d addresses", maxListMembers)
		}
		for _, a := range s.IPAddresses {
			if _, err := netip.ParseAddr(a); err != nil {
				return domain.Errorf(domain.EInvalidRequest, "ip-addresses holds IP addresses (RFC 4001)")
			}
		}
	case FormatAliases:
		if len(s.Identifiers) == 0 || len(s.Identifiers) > maxListMembers {
			return domain.Errorf(domain.EInvalidRequest, "aliases holds 1 to %d identifiers", maxListMembers)
		}
		for _, id := range s.Identifiers {
			if id.Format == FormatAliases {
				return domain.Errorf(domain.EInvalidRequest, "aliases does not nest (RFC 9493 section 3.2.1)")
			}
			if err := id.validate(false); err != nil {
				return err
			}
		}
	}
	return nil
}

// sorted returns names in the order members lists them.
func sorted(names []string) []string {
	order := []string{"email", "phone_number", "iss", "sub", "id", "uri", "url", "jti", "issuer", "assertion_id", "ip-addresses", "identifiers"}
	out := slices.Clone(names)
	slices.SortFunc(out, func(a, b string) int { return slices.Index(order, a) - slices.Index(order, b) })
	return out
}

func validMember(v string) bool {
	if len(v) > maxMemberBytes || !utf8.ValidString(v) {
		return false
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// Equal reports whether s and o are the same subject, member for member.
func (s Subject) Equal(o Subject) bool {
	a, errA := json.Marshal(s)
	b, errB := json.Marshal(o)
	return errA == nil && errB == nil && bytes.Equal(a, b)
}

// Matches reports whether the subject of an event, event, matches s, a
// subject a receiver added or removed (SSF 1.0 section 8.1.3.1):
//
//   - two simple subjects match if they are equal;
//   - two complex subjects match if every member set in both is equal in
//     both, and (tokend's reading) at least one member is set in both:
//     else a subject naming only members tokend never sends (a tenant, a
//     group) would match every event;
//   - a simple and a complex subject (left open by SSF) match if a
//     member of the complex one equals the simple one, so an iss_sub user
//     matches the events about that user's sessions.
func (s Subject) Matches(event Subject) bool {
	sc, ec := s.Format == FormatComplex, event.Format == FormatComplex
	switch {
	case !sc && !ec:
		return s.Equal(event)
	case sc && ec:
		shared := false
		mine, theirs := s.complexMembers(), event.complexMembers()
		for name, m := range mine {
			t := theirs[name]
			if m == nil || t == nil {
				continue
			}
			if !m.Equal(*t) {
				return false
			}
			shared = true
		}
		return shared
	}
	simple, cplx := s, event
	if sc {
		simple, cplx = event, s
	}
	for _, m := range cplx.complexMembers() {
		if m != nil && m.Equal(simple) {
			return true
		}
	}
	return false
}

// truncate cuts s to at most n bytes, on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
