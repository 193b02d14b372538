package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Tenant is a sender whose data is kept apart from the others'.
type Tenant struct {
	ID        string
	CreatedAt time.Time
}

const (
	createTenant = `INSERT INTO tenants (id) VALUES ($1) ON CONFLICT (id) DO NOTHING RETURNING created_at`
	selectTenant = `SELECT created_at FROM tenants WHERE id = $1`
)

// CreateTenant creates tenant id. created is false when it existed
// already; the Tenant returned is the stored one either way. Errors
// wrapping ErrRejected name what is wrong with id.
func (s *Store) CreateTenant(ctx context.Context, id string) (t Tenant, created bool, err error) {
	id = strings.TrimSpace(id)
	if err := checkTenant(id); err != nil {
		return Tenant{}, false, fmt.Errorf("create tenant: %w: %w", ErrRejected, err)
	}
	t.ID = id
	err = s.pool.QueryRow(ctx, createTenant, id).Scan(&t.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		t, err = s.GetTenant(ctx, id)
		return t, false, err
	}
	if err != nil {
		return Tenant{}, false, fmt.Errorf("create tenant %s: %w", id, err)
	}
	return t, true, nil
}

// GetTenant returns tenant id; ErrNotFound if there is none.
func (s *Store) GetTenant(ctx context.Context, id string) (Tenant, error) {
	t := Tenant{ID: id}
	err := s.pool.QueryRow(ctx, selectTenant, id).Scan(&t.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Tenant{}, fmt.Errorf("get tenant %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("get tenant %s: %w", id, err)
	}
	return t, nil
}
