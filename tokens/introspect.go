package tokens

import (
	"context"

	"github.com/tokend/tokend/domain"
)

// Introspection is what introspection learns of a token: whether it is
// active and, if it verified, its family as of the family's last event,
// stored at stream sequence Seq (zero for a token that did not verify or
// a family that does not exist). Family.DPoPJKT, set for a family bound
// to a DPoP key, is the key the answer confirms (cnf.jkt, RFC 9449 section
// 6.2).
type Introspection struct {
	Active bool
	Family domain.Family
	Seq    uint64
}

// IntrospectRefresh reports whether token is an active refresh token
// (domain.Family.RefreshTokenActive). The family is read from its last
// event (events.Store.LoadLatest), never from the read model, so the
// answer reflects every issue, rotation and revocation acknowledged before
// it was asked, on any instance. A token that does not verify is inactive
// without reading its family (one naming a key id this instance does not
// hold may reload the keys, at most once a while, as a refresh does).
// Errors are EUnavailable: the keys could not be reloaded, or the family
// could not be read.
func (s *Service) IntrospectRefresh(ctx context.Context, token string) (Introspection, error) {
	t, _, err := s.codec.Parse(ctx, token)
	if domain.ErrorCode(err) == domain.EUnavailable {
		return Introspection{}, err
	}
	if err != nil {
		return Introspection{}, nil
	}
	f, seq, err := s.writer.LoadLatest(ctx, t.FamilyID)
	if err != nil {
		return Introspection{}, err
	}
	return Introspection{Active: f.RefreshTokenActive(t, s.decider.Now()), Family: f, Seq: seq}, nil
}

// IntrospectAccess reports whether an access token whose signature the
// caller verified, claiming c, is active (domain.Family.AccessTokenActive),
// reading its family as IntrospectRefresh does. Errors are EUnavailable.
func (s *Service) IntrospectAccess(ctx context.Context, c domain.AccessClaims) (Introspection, error) {
	if !domain.ValidID(c.FamilyID) {
		return Introspection{}, nil
	}
	f, seq, err := s.writer.LoadLatest(ctx, c.FamilyID)
	if err != nil {
		return Introspection{}, err
	}
	return Introspection{Active: f.AccessTokenActive(c, s.decider.Now()), Family: f, Seq: seq}, nil
}
