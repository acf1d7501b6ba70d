using System.Collections.Concurrent;
using CsCheck;
using Microsoft.Extensions.Time.Testing;

namespace Canopy.Clock.Tests;

/// <summary>
/// <see cref="HybridClock"/>: monotonic under any physical clock behaviour (property test over random interleavings
/// of forward and backward jumps, reads and remote updates), the receive rule, rejection beyond the max offset (with
/// the clock left untouched), and uniqueness under concurrent use.
/// </summary>
public sealed class HybridClockTests
{
    private const long Ms = 1_000_000;
    private static readonly long MaxOffsetNanos = HybridClock.DefaultMaxOffset.Ticks * 100;

    private static readonly Gen<Step> AnyStep = Gen.Frequency(
        (3, Gen.Frequency(
                (1, Gen.Const(0L)),
                (2, Gen.Long[-100, 100]), // sub-microsecond: below the 100 ns resolution as well
                (4, Gen.Long[-3000 * Ms, 3000 * Ms]))
            .Select(n => (Step)new JumpStep(n))),
        (6, Gen.Const((Step)new NowStep())),
        (3, Gen.Select(Gen.Long[-3000 * Ms, MaxOffsetNanos], Gen.Int[0, 5], (d, l) => (Step)new UpdateStep(d, l))),
        (1, Gen.Select(Gen.Long[MaxOffsetNanos - 2, MaxOffsetNanos + 2], Gen.Int[0, 5], (d, l) => (Step)new UpdateStep(d, l))),
        (1, Gen.Select(Gen.Long[MaxOffsetNanos + 1, MaxOffsetNanos + (5000 * Ms)], Gen.Int[0, 5], (d, l) => (Step)new UpdateStep(d, l))),
        (2, Gen.Int[0, 2].Select(l => (Step)new UpdateLastStep(l))));

    [Fact]
    public void Timestamps_strictly_increase_and_follow_the_receive_rule_under_any_physical_clock()
    {
        Seeds.ForSeeds(AnyStep.Array[1, 80], 500, salt: 10, steps =>
        {
            var time = new SteppableTimeProvider();
            var clock = new HybridClock(time);
            var highest = HlcTimestamp.Zero; // every timestamp returned or accepted so far
            var wallSource = 0L; // the largest physical reading or accepted remote wall: the HLC's wall never exceeds it
            for (var i = 0; i < steps.Length; i++)
            {
                var context = $"step {i} ({steps[i]})";
                var physical = clock.PhysicalNow;
                switch (steps[i])
                {
                    case JumpStep jump:
                        time.Jump(TimeSpan.FromTicks(jump.Nanos / 100));
                        break;
                    case NowStep:
                        var now = clock.Now();
                        Assert.True(now > highest, $"{context}: Now() = {now} is not above {highest}");
                        Assert.True(now.WallNanos >= physical, $"{context}: Now() = {now} is below the physical clock {physical}");
                        wallSource = Math.Max(wallSource, physical);
                        Assert.True(now.WallNanos <= wallSource, $"{context}: Now() = {now} is ahead of every source {wallSource}");
                        highest = now;
                        break;
                    case UpdateStep or UpdateLastStep:
                        var remote = steps[i] is UpdateStep u
                            ? new HlcTimestamp(Math.Max(0, physical + u.AheadNanos), u.Logical)
                            : new HlcTimestamp(clock.Last.WallNanos, clock.Last.Logical + ((UpdateLastStep)steps[i]).LogicalDelta);
                        CheckUpdate(clock, remote, physical, ref highest, ref wallSource, context);
                        break;
                }
            }
        });
    }

    [Fact]
    public void Update_makes_every_later_timestamp_greater_than_the_remote_one()
    {
        var time = new SteppableTimeProvider();
        var clock = new HybridClock(time, TimeSpan.FromMilliseconds(500));
        var physical = clock.PhysicalNow;
        var remote = new HlcTimestamp(physical + (400 * Ms), 17);

        var received = clock.Update(remote);

        Assert.Equal(new HlcTimestamp(remote.WallNanos, 18), received);
        Assert.Equal(new HlcTimestamp(remote.WallNanos, 19), clock.Now()); // physical is still behind: logical ticks on
        time.Jump(TimeSpan.FromMilliseconds(401));
        Assert.Equal(new HlcTimestamp(physical + (401 * Ms), 0), clock.Now()); // physical caught up: back to logical 0
    }

    [Fact]
    public void Update_from_the_past_does_not_move_the_clock_back()
    {
        var time = new SteppableTimeProvider();
        var clock = new HybridClock(time);
        var before = clock.Now();
        var received = clock.Update(new HlcTimestamp(before.WallNanos - (1000 * Ms), 3));
        Assert.Equal(before.Next(), received);
    }

    [Fact]
    public void A_remote_clock_beyond_the_max_offset_is_rejected_and_the_clock_stays_put()
    {
        var time = new SteppableTimeProvider();
        var clock = new HybridClock(time, TimeSpan.FromMilliseconds(500));
        var last = clock.Now();
        var physical = clock.PhysicalNow;

        var error = Assert.Throws<ClockOffsetException>(() => clock.Update(new HlcTimestamp(physical + (740 * Ms), 0)));

        Assert.Equal("remote clock is 740 ms ahead of ours, more than the max offset 500 ms", error.Message);
        Assert.Equal(740 * Ms, error.AheadNanos);
        Assert.Equal(TimeSpan.FromMilliseconds(500), error.MaxOffset);
        Assert.Equal(physical, error.LocalPhysicalNanos);
        Assert.Equal(last, clock.Last);
        Assert.Equal(last.Next(), clock.Now());
    }

    [Fact]
    public void The_max_offset_itself_is_accepted_one_nanosecond_more_is_not()
    {
        var time = new SteppableTimeProvider();
        var clock = new HybridClock(time, TimeSpan.FromMilliseconds(500));
        var physical = clock.PhysicalNow;

        var accepted = new HlcTimestamp(physical + (500 * Ms), 0);
        Assert.True(clock.Update(accepted) > accepted);

        var error = Assert.Throws<ClockOffsetException>(() => clock.Update(new HlcTimestamp(physical + (500 * Ms) + 1, 0)));
        Assert.Equal("remote clock is 500.000001 ms ahead of ours, more than the max offset 500 ms", error.Message);
    }

    [Fact]
    public void Concurrent_Now_calls_give_increasing_values_per_thread_and_unique_values_overall()
    {
        // A frozen clock forces every timestamp through the logical counter; the system clock mixes both paths.
        RunConcurrently(new HybridClock(new FakeTimeProvider()));
        RunConcurrently(new HybridClock(TimeProvider.System));
    }

    [Fact]
    public void PhysicalNow_is_the_time_provider_in_unix_nanoseconds()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UnixEpoch.AddSeconds(3).AddTicks(7));
        var clock = new HybridClock(time);
        Assert.Equal(3_000_000_700L, clock.PhysicalNow);
        Assert.Equal(new HlcTimestamp(3_000_000_700L, 0), clock.Now());

        var tooEarly = new HybridClock(new FakeTimeProvider(new DateTimeOffset(1969, 12, 31, 0, 0, 0, TimeSpan.Zero)));
        var error = Assert.Throws<InvalidOperationException>(() => tooEarly.Now());
        Assert.Contains("outside the HLC range", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Max_offset_defaults_to_500_ms_and_must_be_positive()
    {
        Assert.Equal(TimeSpan.FromMilliseconds(500), HybridClock.DefaultMaxOffset);
        Assert.Equal(HybridClock.DefaultMaxOffset, new HybridClock(TimeProvider.System).MaxOffset);
        Assert.Throws<ArgumentOutOfRangeException>(() => new HybridClock(TimeProvider.System, TimeSpan.Zero));
        Assert.Throws<ArgumentNullException>(() => new HybridClock(null!));
    }

    private static void CheckUpdate(HybridClock clock, HlcTimestamp remote, long physical, ref HlcTimestamp highest, ref long wallSource, string context)
    {
        var before = clock.Last;
        if (remote.WallNanos - physical > MaxOffsetNanos)
        {
            Assert.Throws<ClockOffsetException>(() => clock.Update(remote));
            Assert.True(before == clock.Last, $"{context}: a rejected update of {remote} moved the clock from {before} to {clock.Last}");
            return;
        }

        var received = clock.Update(remote);
        Assert.True(received > remote, $"{context}: Update({remote}) = {received} is not above the remote timestamp");
        Assert.True(received > highest, $"{context}: Update({remote}) = {received} is not above {highest}");
        wallSource = Math.Max(wallSource, Math.Max(physical, remote.WallNanos));
        Assert.True(received.WallNanos <= wallSource, $"{context}: Update({remote}) = {received} is ahead of every source {wallSource}");
        highest = received;
    }

    private static void RunConcurrently(HybridClock clock)
    {
        const int Threads = 4;
        const int PerThread = 20_000;
        var results = new ConcurrentBag<HlcTimestamp[]>();
        using var start = new Barrier(Threads);
        var threads = Enumerable.Range(0, Threads).Select(_ => new Thread(() =>
        {
            var mine = new HlcTimestamp[PerThread];
            start.SignalAndWait();
            for (var i = 0; i < PerThread; i++)
            {
                mine[i] = clock.Now();
            }

            results.Add(mine);
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());

        Assert.Equal(Threads, results.Count);
        foreach (var mine in results)
        {
            for (var i = 1; i < mine.Length; i++)
            {
                Assert.True(mine[i] > mine[i - 1], $"per-thread order broken: {mine[i - 1]} then {mine[i]}");
            }
        }

        Assert.Equal(Threads * PerThread, results.SelectMany(r => r).Distinct().Count());
    }

    private abstract record Step;

    /// <summary>The physical clock jumps by this many nanoseconds (negative: backwards), at 100 ns resolution.</summary>
    private sealed record JumpStep(long Nanos) : Step;

    private sealed record NowStep : Step;

    /// <summary>A remote timestamp this far ahead of our physical clock (negative: behind).</summary>
    private sealed record UpdateStep(long AheadNanos, int Logical) : Step;

    /// <summary>A remote timestamp equal to (or a few logical ticks past) our last one.</summary>
    private sealed record UpdateLastStep(int LogicalDelta) : Step;
}
