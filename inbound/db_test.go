package inbound

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// pgxConnect opens a connection for checks the store has no reader for,
// closed when the test ends.
func pgxConnect(t *testing.T, url string) (*pgx.Conn, error) {
	c, err := pgx.Connect(t.Context(), url)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c, nil
}
