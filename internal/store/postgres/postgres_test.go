package postgres_test

import (
	"testing"

	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/store/storetest"
)

func TestPostgresMeetsTheStoreContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Opener { return pgtest.Fresh(t) })
}
