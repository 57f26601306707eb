package agent

import (
	"context"
	"math/rand/v2"
	"time"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// Login obtains a token for the agent's service: an AppRole, JWT or
// certificate login (see cmd/coffer's agent -auth-method), given the
// agent's client to the cluster.
type Login func(ctx context.Context, c *api.Client) (*pb.TokenInfo, error)

// Bounds of the auto-auth loop: it renews (or logs in again) once two
// thirds of the token's time are gone, and retries a failed login or
// renewal after a jittered back-off.
const (
	minAuthBackoff = 200 * time.Millisecond
	maxAuthBackoff = 30 * time.Second
)

// ownToken is the token the agent lends to callers that send none: the
// one auto-auth logged in with, or Upstream.Token.
func (a *Agent) ownToken() string {
	if t := a.authToken.Load(); t != nil {
		return *t
	}
	return a.cfg.Upstream.Token
}

// autoAuth logs in, keeps the token alive (renewing a renewable one,
// logging in again before a batch or unrenewable one expires) and retries
// with back-off while the cluster cannot answer, until the agent stops.
func (a *Agent) autoAuth() {
	defer a.bg.Done()
	backoff := minAuthBackoff
	var tok *pb.TokenInfo
	for a.stopCtx.Err() == nil {
		var err error
		switch {
		case tok == nil || !tok.GetRenewable() || tok.GetTtlSeconds() < 3:
			tok, err = a.login()
		default:
			var renewed *pb.TokenInfo
			renewed, err = a.client.RenewToken(api.WithToken(a.stopCtx, tok.GetToken()), &pb.RenewTokenRequest{})
			switch {
			case err != nil:
				a.logger.Warn("auto-auth: renewing the token failed; logging in again", "error", err)
				tok, err = a.login()
			case renewed.GetTtlSeconds()*3 < tok.GetCreationTtlSeconds():
				// The token is near its maximum: a fresh login, before it ends.
				tok, err = a.login()
			default:
				renewed.Token = tok.GetToken()
				tok = renewed
			}
		}
		wait := time.Duration(tok.GetTtlSeconds()) * time.Second * 2 / 3
		if err != nil {
			tok = nil
			wait = backoff/2 + rand.N(backoff/2+1)
			backoff = min(2*backoff, maxAuthBackoff)
		} else {
			backoff = minAuthBackoff
			if tok.GetTtlSeconds() == 0 {
				wait = maxAuthBackoff // a token that does not expire: check now and then
			}
		}
		t := time.NewTimer(max(wait, minAuthBackoff))
		select {
		case <-a.stopCtx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// login runs the configured login and installs its token.
func (a *Agent) login() (*pb.TokenInfo, error) {
	ctx, cancel := context.WithTimeout(a.stopCtx, 30*time.Second)
	defer cancel()
	tok, err := a.cfg.Login(ctx, a.client)
	if err != nil {
		a.logger.Warn("auto-auth: login failed; retrying", "error", err)
		return nil, err
	}
	t := tok.GetToken()
	a.authToken.Store(&t)
	a.authReady.Do(func() { close(a.authed) })
	a.logger.Info("auto-auth: logged in", "type", tok.GetType(), "ttl_seconds", tok.GetTtlSeconds(), "policies", tok.GetPolicies())
	return tok, nil
}

// WaitAuth blocks until auto-auth has a token, or ctx ends. Without
// auto-auth it returns at once.
func (a *Agent) WaitAuth(ctx context.Context) error {
	if a.cfg.Login == nil {
		return nil
	}
	select {
	case <-a.authed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
