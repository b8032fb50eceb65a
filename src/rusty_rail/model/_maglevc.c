/*
 * Maglev table population, the hot loop of rusty_rail/model/maglev.py (loaded with ctypes).
 *
 * A plain C library, no Python C-API: the Python side hashes the backends (offset and
 * skip of each permutation) and this file runs the weighted turn schedule of
 * docs/maglev.md. The pure-Python fallback in maglev.py computes the same table; the
 * unit tests hold the two to identical output.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Return codes, mirrored in maglev.py. */
#define MAGLEV_OK 0
#define MAGLEV_EBADARG -1 /* M not prime, offset >= M, skip not in 1..M-1, weight > 65535
			   or no weight > 0 */
#define MAGLEV_ENOMEM -2

/* Keeps credits and turn rounds far from overflow: 2^24 turns x 2^16 < 2^40. */
#define MAX_WEIGHT 0xFFFFu

int32_t rr_maglev_populate(uint32_t backend_count, uint32_t table_size,
			   const uint32_t *offsets, const uint32_t *skips,
			   const uint32_t *weights, uint32_t *slots);

/* Every walk visits all M slots only when gcd(skip, M) = 1 for every skip; a prime M
 * guarantees it, and without it a walk could circle forever past full slots. */
static int is_prime(uint32_t n)
{
	if (n < 2)
		return 0;
	if (n % 2 == 0)
		return n == 2;
	for (uint32_t d = 3; d <= n / d; d += 2)
		if (n % d == 0)
			return 0;
	return 1;
}

/* a^-1 mod m for a prime m and 0 < a < m (extended Euclid). */
static uint32_t inverse_mod(uint32_t a, uint32_t m)
{
	int64_t t = 0, new_t = 1, r = m, new_r = a;
	while (new_r != 0) {
		int64_t q = r / new_r, tmp;
		tmp = t - q * new_t;
		t = new_t;
		new_t = tmp;
		tmp = r - q * new_r;
		r = new_r;
		new_r = tmp;
	}
	return (uint32_t)(t < 0 ? t + m : t);
}

struct vacant_list {
	uint32_t *slots; /* the vacant slots, in no particular order */
	uint32_t count;
	double size_reciprocal;
};

/*
 * The first vacant slot on the walk slot, slot + skip, slot + 2 skip, ... (mod M), found
 * without walking: each vacant slot v is ranked by its distance along the walk,
 * ((v - slot) * skip^-1) mod M, and the nearest wins. Returns its index in the list.
 */
static uint32_t nearest_vacant(const struct vacant_list *list, uint32_t m, uint32_t slot,
			       uint32_t skip_inverse)
{
	uint32_t best = 0, best_distance = UINT32_MAX;
	for (uint32_t k = 0; k < list->count; k++) {
		uint32_t v = list->slots[k];
		uint64_t steps = (uint64_t)(v >= slot ? v - slot : v + m - slot) * skip_inverse;
		/* steps < 2^48: the double quotient is off by at most one, fixed below. */
		int64_t distance = (int64_t)steps - (int64_t)((double)steps * list->size_reciprocal) * m;
		if (distance < 0)
			distance += m;
		else if (distance >= m)
			distance -= m;
		if ((uint32_t)distance < best_distance) {
			best_distance = (uint32_t)distance;
			best = k;
		}
	}
	return best;
}

/*
 * The table being filled. Taken slots are marked in a bitmap (8 KiB for M = 65537, so the
 * probes, which land all over the table, stay in L1). A walk costs about M / vacant probes,
 * so most probes would happen in the last few hundred turns: once at most sqrt(M) slots are
 * vacant, they go into a list and each turn picks the nearest along its walk instead
 * (nearest_vacant), which costs about sqrt(M) per turn. Both give the same slot.
 */
struct filler {
	uint32_t size;
	uint32_t vacant;
	uint32_t endgame_at;
	uint32_t *slots;
	uint64_t *taken;
	const uint32_t *skips;
	uint32_t *position; /* the next slot of each backend's walk */
	uint32_t *skip_inverse; /* 0 until the endgame needs it */
	struct vacant_list endgame;
};

/* The first vacant slot of backend i's walk, from the endgame list (taken off it). */
static uint32_t claim_from_list(struct filler *f, uint32_t i, uint32_t slot)
{
	if (f->skip_inverse[i] == 0)
		f->skip_inverse[i] = inverse_mod(f->skips[i], f->size);
	struct vacant_list *list = &f->endgame;
	uint32_t k = nearest_vacant(list, f->size, slot, f->skip_inverse[i]);
	slot = list->slots[k];
	list->slots[k] = list->slots[--list->count];
	return slot;
}

static void make_vacant_list(struct filler *f)
{
	for (uint32_t s = 0; s < f->size; s++)
		if (!((f->taken[s >> 6] >> (s & 63)) & 1))
			f->endgame.slots[f->endgame.count++] = s;
}

/* Backend i claims the first vacant slot of its walk; returns whether the table is full. */
static inline int take_turn(struct filler *f, uint32_t i)
{
	const uint32_t m = f->size;
	const uint32_t skip = f->skips[i];
	uint32_t slot = f->position[i];
	if (f->vacant > f->endgame_at) {
		uint64_t *taken = f->taken;
		while ((taken[slot >> 6] >> (slot & 63)) & 1) {
			slot += skip;
			if (slot >= m)
				slot -= m;
		}
		taken[slot >> 6] |= UINT64_C(1) << (slot & 63);
		if (--f->vacant == f->endgame_at)
			make_vacant_list(f);
	} else {
		slot = claim_from_list(f, i, slot);
		--f->vacant;
	}
	f->slots[slot] = i;
	slot += skip;
	f->position[i] = slot >= m ? slot - m : slot;
	return f->vacant == 0;
}

/*
 * The schedule as docs/maglev.md states it: in each round, backends in index order add their
 * weight to a credit; a credit that reaches the largest weight pays for one turn. Rounds
 * repeat until the table is full. A backend's credit does not depend on anyone's turns, so
 * each round first lists who turns (without branches: whether a credit is enough is a coin
 * toss the branch predictor would lose), then runs those turns in index order.
 */
static void schedule_by_rounds(struct filler *f, uint32_t backend_count, const uint32_t *weights,
			       uint32_t max_weight, uint32_t *credit, uint32_t *turners)
{
	for (;;) {
		uint32_t turner_count = 0;
		for (uint32_t i = 0; i < backend_count; i++) {
			uint32_t c = credit[i] + weights[i];
			uint32_t turns = c >= max_weight;
			credit[i] = c - (turns ? max_weight : 0);
			turners[turner_count] = i;
			turner_count += turns;
		}
		for (uint32_t k = 0; k < turner_count; k++)
			if (take_turn(f, turners[k]))
				return;
	}
}

/* All weights equal: every backend turns in every round, the credits are not needed. */
static void schedule_round_robin(struct filler *f, uint32_t backend_count)
{
	for (;;)
		for (uint32_t i = 0; i < backend_count; i++)
			if (take_turn(f, i))
				return;
}

struct turn {
	uint64_t round;
	uint32_t backend;
};

static int turn_before(struct turn a, struct turn b)
{
	return a.round < b.round || (a.round == b.round && a.backend < b.backend);
}

/* ceil(turns * max_weight / weight): the round of a backend's turn number `turns` (from 1). */
static uint64_t round_of_turn(uint64_t turns, uint32_t max_weight, uint32_t weight)
{
	return (turns * max_weight + weight - 1) / weight;
}

/*
 * The same turns in the same order, without visiting idle backends. A backend's credit after
 * r rounds is r * weight, so its k-th turn falls in round ceil(k * Wmax / weight); turns run
 * in (round, index) order, which a binary min-heap hands out. Costs log N per turn instead
 * of N per round: the better deal when a few heavy backends turn in rounds where most of the
 * others stay idle.
 */
static void schedule_by_heap(struct filler *f, uint32_t backend_count, const uint32_t *weights,
			     uint32_t max_weight, struct turn *heap, uint32_t *turns_taken)
{
	uint32_t count = 0;
	for (uint32_t i = 0; i < backend_count; i++) {
		if (weights[i] == 0)
			continue;
		struct turn entry = {round_of_turn(1, max_weight, weights[i]), i};
		uint32_t child = count++;
		while (child > 0 && turn_before(entry, heap[(child - 1) / 2])) {
			heap[child] = heap[(child - 1) / 2];
			child = (child - 1) / 2;
		}
		heap[child] = entry;
	}
	for (;;) {
		uint32_t i = heap[0].backend;
		if (take_turn(f, i))
			return;
		struct turn entry = {round_of_turn(++turns_taken[i] + 1, max_weight, weights[i]), i};
		uint32_t parent = 0;
		for (;;) {
			uint32_t child = 2 * parent + 1;
			if (child >= count)
				break;
			if (child + 1 < count && turn_before(heap[child + 1], heap[child]))
				child++;
			if (!turn_before(heap[child], entry))
				break;
			heap[parent] = heap[child];
			parent = child;
		}
		heap[parent] = entry;
	}
}

/*
 * Fill slots[0..table_size) with backend indices 0..backend_count-1: backend i walks its
 * permutation (offsets[i] + k * skips[i]) % table_size, and turns are scheduled by weight
 * (docs/maglev.md). Backends of weight 0 get no slot.
 */
int32_t rr_maglev_populate(uint32_t backend_count, uint32_t table_size,
			   const uint32_t *offsets, const uint32_t *skips,
			   const uint32_t *weights, uint32_t *slots)
{
	const uint32_t m = table_size;
	uint32_t max_weight = 0, min_weight = UINT32_MAX;
	uint64_t weight_sum = 0;
	for (uint32_t i = 0; i < backend_count; i++) {
		if (offsets[i] >= m || skips[i] == 0 || skips[i] >= m || weights[i] > MAX_WEIGHT)
			return MAGLEV_EBADARG;
		if (weights[i] > max_weight)
			max_weight = weights[i];
		if (weights[i] < min_weight)
			min_weight = weights[i];
		weight_sum += weights[i];
	}
	if (max_weight == 0 || !is_prime(m))
		return MAGLEV_EBADARG;

	/* ceil(sqrt(M)), below M so that the list is made by a walk's turn. */
	uint32_t endgame_at = 1;
	while ((uint64_t)endgame_at * endgame_at < m && endgame_at < m - 1)
		endgame_at++;
	struct filler f = {
		.size = m,
		.vacant = m,
		.endgame_at = endgame_at,
		.slots = slots,
		.taken = calloc((m + 63) / 64, sizeof(uint64_t)),
		.skips = skips,
		.position = malloc((size_t)backend_count * sizeof(uint32_t)),
		.skip_inverse = calloc(backend_count, sizeof(uint32_t)),
		.endgame = {
			.slots = malloc((size_t)endgame_at * sizeof(uint32_t)),
			.count = 0,
			.size_reciprocal = 1.0 / m,
		},
	};
	/* The round scan visits N backends (about 1 ns each) in each of about M * Wmax / sum(w)
	 * rounds, the heap spends 30 to 170 ns per turn (M turns) depending on how much it
	 * churns: measured, the heap wins above about 32 visits per turn. */
	int use_heap = (uint64_t)backend_count * max_weight > 32 * weight_sum;
	uint32_t *credit = calloc(backend_count, sizeof(uint32_t));
	uint32_t *turners = malloc((size_t)backend_count * sizeof(uint32_t));
	struct turn *heap = use_heap ? malloc((size_t)backend_count * sizeof(struct turn)) : NULL;
	int32_t result = MAGLEV_ENOMEM;
	if (!f.taken || !f.position || !f.skip_inverse || !f.endgame.slots || !credit
	    || !turners || (use_heap && !heap))
		goto out;
	memcpy(f.position, offsets, (size_t)backend_count * sizeof(uint32_t));

	if (min_weight == max_weight)
		schedule_round_robin(&f, backend_count);
	else if (use_heap)
		schedule_by_heap(&f, backend_count, weights, max_weight, heap, credit);
	else
		schedule_by_rounds(&f, backend_count, weights, max_weight, credit, turners);
	result = MAGLEV_OK;
out:
	free(f.taken);
	free(f.position);
	free(f.skip_inverse);
	free(f.endgame.slots);
	free(credit);
	free(turners);
	free(heap);
	return result;
}
