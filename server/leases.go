package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/api/route"
	"coffer/fsm"
	"coffer/server/database"
	"coffer/server/lease"
)

// Lease list pages: the default and the largest a call may ask for.
const (
	defaultLeasePage = 256
	maxLeasePage     = 1024
	maxLeaseIDLen    = 512
)

// leaseServer is the Lease service over the replicated lease table. Any
// node looks leases up and lists them from its own state; renewals and
// revocations are the leader's (the route table forwards them).
type leaseServer struct {
	pb.UnimplementedLeaseServer
	table *lease.Table
	// renew extends what a lease of a kind stands for (the database
	// user's VALID UNTIL) before the lease is extended.
	renew map[string]lease.RenewHook
	now   func() time.Time
}

// renewHook calls the renewal of the lease's kind (nothing for a kind
// without one).
func (l *leaseServer) renewHook(ctx context.Context, rec *lease.Record, expire time.Time) error {
	if h := l.renew[rec.Kind]; h != nil {
		return h(ctx, rec, expire)
	}
	return nil
}

// validLeaseID checks a lease id a request names.
func validLeaseID(id string) error {
	switch {
	case id == "":
		return invalidf("lease_id is empty: give the id of the lease (coffer lease list)")
	case len(id) > maxLeaseIDLen:
		return invalidf("lease_id is longer than %d bytes", maxLeaseIDLen)
	}
	return nil
}

// info is a lease as the API shows it.
func (l *leaseServer) info(r *lease.Record) *pb.LeaseInfo {
	ttl := int64(0)
	if r.State == lease.StateActive {
		ttl = max(0, int64(r.ExpireTime.Sub(l.now()).Round(time.Second)/time.Second))
	}
	info := &pb.LeaseInfo{
		Id: r.ID, IssueTimeUnixNano: r.IssueTime.UnixNano(), ExpireTimeUnixNano: r.ExpireTime.UnixNano(),
		Renewable: r.Renewable && r.State == lease.StateActive, TtlSeconds: ttl, State: string(r.State),
		Attempts: int32(r.Attempts), LastError: r.LastError, MaxExpireTimeUnixNano: r.MaxExpireTime.UnixNano(),
		Subject: r.Subject,
	}
	if !r.LastRenewal.IsZero() {
		info.LastRenewalUnixNano = r.LastRenewal.UnixNano()
	}
	return info
}

// Lookup returns a lease.
func (l *leaseServer) Lookup(ctx context.Context, req *pb.LeaseRequest) (*pb.LeaseInfo, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	if err := validLeaseID(req.GetLeaseId()); err != nil {
		return nil, err
	}
	r, err := l.table.Get(req.GetLeaseId())
	if err != nil {
		return nil, leaseError(err)
	}
	return l.info(r), nil
}

// Renew extends a lease, never past its max TTL.
func (l *leaseServer) Renew(ctx context.Context, req *pb.LeaseRenewRequest) (*pb.LeaseInfo, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	if err := validLeaseID(req.GetLeaseId()); err != nil {
		return nil, err
	}
	if req.GetIncrementSeconds() < 0 || req.GetIncrementSeconds() > maxDurationSeconds {
		return nil, invalidf("increment must be from 0 (the lease's TTL) to 100 years (%d seconds)", maxDurationSeconds)
	}
	r, capped, err := l.table.Renew(ctx, req.GetLeaseId(), time.Duration(req.GetIncrementSeconds())*time.Second, l.renewHook)
	if err != nil {
		return nil, leaseError(err)
	}
	info := l.info(r)
	// The renewal's answer is the TTL it gave, as Vault's.
	info.TtlSeconds = int64(r.ExpireTime.Sub(r.LastRenewal).Round(time.Second) / time.Second)
	if capped {
		info.Warnings = append(info.Warnings, fmt.Sprintf("TTL of %q exceeded the lease's max TTL; it ends at %s", time.Duration(req.GetIncrementSeconds())*time.Second, r.MaxExpireTime.UTC().Format(time.RFC3339)))
	}
	return info, nil
}

// Revoke revokes a lease now. One that does not exist is revoked already
// (Vault answers the same). A revocation that fails is kept and retried.
func (l *leaseServer) Revoke(ctx context.Context, req *pb.LeaseRequest) (*pb.LeaseRevokeResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	if err := validLeaseID(req.GetLeaseId()); err != nil {
		return nil, err
	}
	err := l.table.Revoke(ctx, req.GetLeaseId())
	switch {
	case errors.Is(err, fsm.ErrNotFound):
		return &pb.LeaseRevokeResponse{}, nil
	case err != nil:
		return nil, leaseError(err)
	}
	return &pb.LeaseRevokeResponse{Count: 1}, nil
}

// RevokePrefix makes every lease under a prefix due now; the leader's
// expiry worker revokes them.
func (l *leaseServer) RevokePrefix(ctx context.Context, req *pb.LeasePrefixRequest) (*pb.LeaseRevokeResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	p := req.GetPrefix()
	if strings.TrimSpace(p) == "" {
		return nil, invalidf("prefix is empty: name the leases to revoke (database/creds/ROLE/)")
	}
	n, err := l.table.RevokePrefix(ctx, p)
	if err != nil {
		return nil, leaseError(err)
	}
	return &pb.LeaseRevokeResponse{Count: int64(n)}, nil
}

// RevokeForce removes every lease under a prefix without revoking what it
// stands for (Vault's revoke-force): the way out for revocations that can
// never succeed. The answer warns that the users stay.
func (l *leaseServer) RevokeForce(ctx context.Context, req *pb.LeasePrefixRequest) (*pb.LeaseRevokeResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	p := req.GetPrefix()
	if strings.TrimSpace(p) == "" {
		return nil, invalidf("prefix is empty: name the leases to forget (database/creds/ROLE/)")
	}
	n, err := l.table.ForgetPrefix(ctx, p)
	if err != nil {
		return nil, leaseError(err)
	}
	resp := &pb.LeaseRevokeResponse{Count: int64(n)}
	if n > 0 {
		resp.Warnings = []string{fmt.Sprintf("%d lease(s) removed WITHOUT revocation: what they stood for (database users) still exists; drop it by hand", n)}
	}
	return resp, nil
}

// List returns one page of the leases under a prefix.
func (l *leaseServer) List(ctx context.Context, req *pb.LeaseListRequest) (*pb.LeaseListResponse, error) {
	if err := requireCaller(ctx); err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	switch {
	case limit < 0:
		return nil, invalidf("limit must not be negative")
	case limit == 0:
		limit = defaultLeasePage
	case limit > maxLeasePage:
		limit = maxLeasePage
	}
	// The folder the route's policy path names: "database/creds/app"
	// covers app's leases, not app2's.
	recs, more, err := l.table.List(route.LeaseListPrefix(req.GetPrefix()), req.GetAfter(), limit, req.GetFailed())
	if err != nil {
		return nil, leaseError(err)
	}
	out := &pb.LeaseListResponse{More: more}
	for _, r := range recs {
		out.Leases = append(out.Leases, l.info(r))
	}
	return out, nil
}

// leaseError gives the lease table's errors their reasons.
func leaseError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, lease.ErrRevokeFailed):
		// The revoker's own error decides: the database was down, or it
		// refused the revocation.
		return dbError(err)
	}
	return err
}

// dbError gives the database engine's errors their reasons: the database
// could not be reached, or it refused a statement (its message follows).
func dbError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, database.ErrUnreachable):
		return withMessage(ErrDatabaseUnreachable, "%v", err)
	case errors.Is(err, database.ErrInvalidConfig):
		return withMessage(ErrInvalidArgument, "%v", err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return withMessage(ErrDatabaseUnreachable, "the database did not answer in time: %v", err)
	}
	return withMessage(ErrDatabaseError, "%v", err)
}
