using System.CommandLine;
using Canopy.Host;
using Canopy.Replication.MultiRaft;

namespace Canopy.Cli.Commands;

/// <summary>
/// <c>canopy raft-node</c>: one server of a Raft-only cluster (many groups, a key-value map each) with an HTTP admin
/// API. It exercises the replication layer alone on real sockets and disks: the real-process tests and the Raft
/// benchmarks run it. The full server (ranges, leases, transactions) is <c>canopy start</c>.
/// </summary>
public static class RaftNodeCommand
{
    public static Command Build()
    {
        var id = new Option<ulong>("--id") { Description = "This server's id (one of --members).", Required = true, HelpName = "n" };
        var store = new Option<string>("--store") { Description = "Store directory (RocksDB).", Required = true, HelpName = "dir" };
        var listen = new Option<string>("--listen-addr") { Description = "Address for the other servers (HOST:PORT).", Required = true, HelpName = "host:port" };
        var http = new Option<string>("--http-addr") { Description = "Address of the HTTP admin API (HOST:PORT).", Required = true, HelpName = "host:port" };
        var members = new Option<string>("--members") { Description = "Every server of the cluster: ID=HOST:PORT,... (their --listen-addr).", Required = true, HelpName = "list" };
        var groups = Options.Int("--groups", "Raft groups, each replicated on every member (bootstrapped on a new store).", 32, min: 1);
        var tick = Options.Duration("--tick", "Raft tick interval.", TimeSpan.FromMilliseconds(50));
        var election = Options.Int("--election-ticks", "Election timeout in ticks (randomised up to twice that).", 10, min: 2);

        var cmd = new Command("raft-node", "Run one server of a Raft-only cluster (replication layer alone) with an HTTP admin API.")
        {
            id, store, listen, http, members, groups, tick, election,
        };

        cmd.SetAction(async (parseResult, ct) =>
        {
            var all = Endpoints.ParseMembers(parseResult.GetValue(members)!, "--members");
            var self = parseResult.GetValue(id);
            if (!all.ContainsKey(self))
            {
                throw CliException.Usage($"--id {self} is not one of --members");
            }

            var electionTicks = parseResult.GetValue(election);
            var options = new RaftNodeServerOptions
            {
                ServerId = self,
                ListenEndPoint = Endpoints.Parse(parseResult.GetValue(listen)!, "--listen-addr"),
                HttpEndPoint = Endpoints.Parse(parseResult.GetValue(http)!, "--http-addr"),
                Members = all,
                StoreDirectory = Path.GetFullPath(parseResult.GetValue(store)!),
                Groups = parseResult.GetValue(groups),
                TickInterval = parseResult.GetValue(tick) ?? TimeSpan.FromMilliseconds(50),
                Scheduler = new SchedulerOptions { ElectionTicks = electionTicks, LivenessTicks = electionTicks, HeartbeatTicks = Math.Max(1, electionTicks / 5) },
            };

            var output = parseResult.InvocationConfiguration.Output;
            var log = (string m) =>
            {
                lock (output)
                {
                    output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} s{self} {m}");
                }
            };
            await using var server = await RaftNodeServer.StartAsync(options, log);
            log($"raft-node {self} ready: peers on {options.ListenEndPoint}, admin on http://{options.HttpEndPoint}");
            try
            {
                await Task.Delay(Timeout.Infinite, ct);
            }
            catch (OperationCanceledException)
            {
                log("shutting down");
            }

            return ExitCodes.Success;
        });

        return cmd;
    }
}
