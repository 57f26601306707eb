package chaos

import (
	"context"
	"fmt"
	"strings"

	"coffer/api"
	pb "coffer/api/cofferpb"
)

// UpgradeDriver is a driver that can move a node to another build: the
// rolling-upgrade scenario needs one (the docker driver).
type UpgradeDriver interface {
	Driver
	// Upgrade starts node id, stopped, from image, with its data, name
	// and addresses; it comes back sealed.
	Upgrade(ctx context.Context, id, image string) error
}

// Upgrade implements UpgradeDriver: the stopped container is removed (its
// data volume stays) and created again from image.
func (d *Docker) Upgrade(ctx context.Context, id, image string) error {
	n, err := d.node(id)
	if err != nil {
		return err
	}
	if _, err := docker(ctx, "rm", id); err != nil {
		return err
	}
	n.image = image
	if err := d.create(ctx, n, d.join()); err != nil {
		return err
	}
	return d.run(ctx, "start", id)
}

// The kinds of a rolling upgrade's faults.
const (
	KindUpgradeFollower = "upgrade-follower"
	KindUpgradeLeader   = "upgrade-leader"
)

// RollingUpgrade moves a cluster running an earlier build to image, node
// by node under load, the way docs/OPERATIONS.md says to upgrade: the
// followers first, the leader last, each stopped gracefully, started from
// the new build, unsealed and caught up before the next goes, so that a
// cluster of mixed versions serves in between. The load's history is
// checked as in every scenario (no acknowledged write lost, none applied
// twice, linearizable), and a token made before the upgrade must still
// be valid after it.
func RollingUpgrade(image string) Scenario {
	return Scenario{Name: "rolling-upgrade", Body: func(r *Run) error {
		ud, ok := r.C.D.(UpgradeDriver)
		if !ok {
			return fmt.Errorf("the %s driver cannot upgrade a node", r.C.D.Name())
		}
		ctx, cancel := r.waitCtx()
		defer cancel()
		root, err := api.New(api.Config{Endpoints: r.C.Endpoints(), Token: r.C.Token, TLS: r.C.D.ClientTLS()})
		if err != nil {
			return err
		}
		defer root.Close()
		tok, err := root.CreateToken(ctx, &pb.CreateTokenRequest{Policies: []string{"default"}, TtlSeconds: 3600, DisplayName: "made-before-the-upgrade"})
		if err != nil {
			return fmt.Errorf("a token before the upgrade: %w", err)
		}
		kinds := map[string]string{"follower": KindUpgradeFollower, "leader": KindUpgradeLeader}
		upgrade := func(ctx context.Context, id string) error { return ud.Upgrade(ctx, id, image) }
		if err := rollingRound(r, "upgrade", kinds, r.C.D.Stop, upgrade); err != nil {
			return err
		}
		user, err := api.New(api.Config{Endpoints: r.C.Endpoints(), Token: tok.Token, TLS: r.C.D.ClientTLS()})
		if err != nil {
			return err
		}
		defer user.Close()
		info, err := user.LookupToken(ctx, &pb.LookupTokenRequest{})
		if err != nil || info.Accessor != tok.Accessor {
			return fmt.Errorf("the token made before the upgrade does not open after it (accessor %q, err %v)", info.GetAccessor(), err)
		}
		r.Logf("every node runs %s; the token made before the upgrade still opens", image)
		if lg, ok := r.C.D.(interface {
			Logs(context.Context, int) string
		}); ok {
			// From a build whose default log store was boltdb.
			r.Logf("nodes that moved their Raft log to the WAL on the new build: %d", strings.Count(lg.Logs(ctx, 5000), "moved the raft log from raft.db to the WAL"))
		}
		return nil
	}}
}
