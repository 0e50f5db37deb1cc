package main

import (
	"encoding/json"

	"github.com/tokend/tokend/tokens"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func eventsIssue(subject, client string) tokens.IssueRequest {
	return tokens.IssueRequest{Subject: subject, ClientID: client, Scope: []string{"openid"}}
}

func eventsRefresh(token, client string) tokens.RefreshRequest {
	return tokens.RefreshRequest{Token: token, ClientID: client}
}
