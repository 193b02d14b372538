package relay

import (
	"cmp"
	"context"
	"slices"
)

// SmarthostDestination is the one destination of a worker that relays
// everything through a smarthost.
const SmarthostDestination = "smarthost"

// destinationOf names the next hop of a route by its most preferred MX
// host (the lowest preference, then the name: RFC 5321 5.1 shuffles equal
// preferences, and the name must not change with the shuffle). Every
// domain whose mail goes first to one provider's host (a mailbox
// provider's hosted domains) so shares one destination and one
// concurrency limit, as they share the machine. The backups are left out
// of the name: one that fails to resolve must not make a new destination.
func destinationOf(hosts []Host) string {
	if len(hosts) == 0 {
		return ""
	}
	first := slices.MinFunc(hosts, func(a, b Host) int {
		return cmp.Or(cmp.Compare(a.Preference, b.Preference), cmp.Compare(a.Name, b.Name))
	})
	return "mx:" + first.Name
}

// nextHop is where a job's attempt goes: the hosts to try (or why there
// are none) and the destination whose transactions it counts among.
type nextHop struct {
	hosts []Host
	err   error  // a routing failure: every recipient gets RouteResult(err)
	dest  string // "" when err is set: no connection will be opened
	max   int    // the destination's concurrency cap
	att   *Attempt
	slot  *slot // the job's transaction slot at dest, until endSlot
}

// route finds the next hop for domain.
func (w *Worker) route(ctx context.Context, domain string) *nextHop {
	hosts, err := w.opts.Route(ctx, domain)
	switch {
	case err != nil:
		return &nextHop{err: err}
	case w.opts.Smarthost:
		return w.shaped(&nextHop{hosts: hosts, dest: SmarthostDestination, max: w.opts.SmarthostConnections})
	default:
		return w.shaped(&nextHop{hosts: hosts, dest: destinationOf(hosts), max: w.opts.PerDestination})
	}
}

// shaped applies the shaping file's max_connections for the destination.
func (w *Worker) shaped(h *nextHop) *nextHop {
	if w.opts.Shaper != nil {
		if n := w.opts.Shaper.MaxConnections(h.dest); n > 0 {
			h.max = n
		}
	}
	return h
}

// DestinationName is the destination (next hop) a route's hosts make, as
// the scheduler, metrics and `mailferry shaping show` name it.
func DestinationName(hosts []Host) string { return destinationOf(hosts) }
