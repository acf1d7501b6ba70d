using CsCheck;
using Microsoft.Extensions.Time.Testing;

namespace Canopy.Clock.Tests;

/// <summary><see cref="ClockSkewMonitor"/>: unhealthy exactly when a majority of the measured peers is beyond the max offset.</summary>
public sealed class ClockSkewMonitorTests
{
    private static readonly TimeSpan MaxOffset = TimeSpan.FromMilliseconds(500);

    [Fact]
    public void Without_measurements_the_clock_is_healthy()
    {
        var monitor = new ClockSkewMonitor(MaxOffset);
        Assert.True(monitor.IsHealthy(out var reason));
        Assert.Equal("no clock offset measurements to peers yet", reason);
    }

    [Fact]
    public void In_a_three_server_cluster_only_the_server_that_is_off_is_unhealthy()
    {
        // Server 3 is 700 ms ahead of servers 1 and 2, which agree.
        var good = new ClockSkewMonitor(MaxOffset);
        good.Record(2, TimeSpan.FromMilliseconds(12));
        good.Record(3, TimeSpan.FromMilliseconds(700));
        Assert.True(good.IsHealthy(out var goodReason));
        Assert.Equal("clock is within the max offset 500 ms of 1 of 2 peers", goodReason);

        var bad = new ClockSkewMonitor(MaxOffset);
        bad.Record(1, TimeSpan.FromMilliseconds(-700));
        bad.Record(2, TimeSpan.FromMilliseconds(-712.5));
        Assert.False(bad.IsHealthy(out var badReason));
        Assert.Equal(
            "clock is more than the max offset 500 ms away from 2 of 2 peers (peer 1: -700 ms, peer 2: -712.5 ms); refusing to serve",
            badReason);
    }

    [Fact]
    public void Exactly_the_max_offset_is_within_it()
    {
        var monitor = new ClockSkewMonitor(MaxOffset);
        monitor.Record(7, MaxOffset);
        monitor.Record(8, -MaxOffset);
        Assert.True(monitor.IsHealthy(out _));
        monitor.Record(8, -MaxOffset - TimeSpan.FromTicks(1));
        monitor.Record(7, MaxOffset + TimeSpan.FromTicks(1));
        Assert.False(monitor.IsHealthy(out var reason));
        Assert.Contains("peer 7: +500.0001 ms, peer 8: -500.0001 ms", reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Only_the_latest_measurement_of_a_peer_counts_and_forgotten_peers_do_not()
    {
        var monitor = new ClockSkewMonitor(MaxOffset);
        monitor.Record(1, TimeSpan.FromSeconds(2));
        Assert.False(monitor.IsHealthy(out _));
        monitor.Record(1, TimeSpan.FromMilliseconds(3));
        Assert.True(monitor.IsHealthy(out _));
        monitor.Record(2, TimeSpan.FromSeconds(2));
        monitor.Record(3, TimeSpan.FromSeconds(2));
        Assert.False(monitor.IsHealthy(out _));
        Assert.True(monitor.Forget(3));
        Assert.False(monitor.Forget(3));
        Assert.True(monitor.IsHealthy(out _)); // 1 of 2 far: not a majority
    }

    [Fact]
    public void Expired_measurements_are_ignored()
    {
        var time = new FakeTimeProvider();
        var monitor = new ClockSkewMonitor(MaxOffset, time, TimeSpan.FromSeconds(10));
        monitor.Record(1, TimeSpan.FromSeconds(2));
        monitor.Record(2, TimeSpan.FromSeconds(2));
        time.Advance(TimeSpan.FromSeconds(6));
        monitor.Record(3, TimeSpan.FromMilliseconds(1));
        Assert.False(monitor.IsHealthy(out _));
        Assert.Equal(3, monitor.MeasuredPeers);

        time.Advance(TimeSpan.FromSeconds(5)); // peers 1 and 2 measured 11 s ago: expired
        Assert.Equal(1, monitor.MeasuredPeers);
        Assert.True(monitor.IsHealthy(out var reason));
        Assert.Equal("clock is within the max offset 500 ms of 1 of 1 peers", reason);
    }

    [Fact]
    public void Healthy_exactly_when_at_most_half_the_peers_are_far()
    {
        var offsets = Gen.Long[-2000, 2000].Select(ms => TimeSpan.FromMilliseconds(ms)).Array[0, 9];
        Seeds.ForSeeds(offsets, 500, salt: 20, measured =>
        {
            var monitor = new ClockSkewMonitor(MaxOffset);
            for (var i = 0; i < measured.Length; i++)
            {
                monitor.Record((ulong)i, measured[i]);
            }

            var far = measured.Count(o => o.Duration() > MaxOffset);
            Assert.Equal(far * 2 <= measured.Length, monitor.IsHealthy(out var reason));
            Assert.False(string.IsNullOrEmpty(reason));
        });
    }
}
