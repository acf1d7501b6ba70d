using System.CommandLine;
using Canopy.Server;
using Canopy.Storage;

namespace Canopy.Cli.Commands;

/// <summary>
/// <c>canopy start</c> (a member of a cluster: --join, then <c>canopy init</c>) and <c>canopy start-single-node</c>
/// (the embedded default: one server that initialises itself). Both run until SIGTERM or Ctrl-C, then shut down
/// cleanly; SIGKILL loses no acknowledged write.
/// </summary>
public static class StartCommand
{
    public static Command BuildStart() => Build(single: false);

    public static Command BuildSingleNode() => Build(single: true);

    private static Command Build(bool single)
    {
        var store = new Option<string>("--store") { Description = "Store directory (RocksDB).", HelpName = "dir", DefaultValueFactory = _ => "canopy-data" };
        var listen = new Option<string>("--listen-addr") { Description = "Address for other servers and for clients (HOST:PORT).", HelpName = "host:port", DefaultValueFactory = _ => "127.0.0.1:26257" };
        var http = new Option<string>("--http-addr") { Description = "Address of the HTTP endpoint (status; WebSocket gateway).", HelpName = "host:port", DefaultValueFactory = _ => "127.0.0.1:8080" };
        var join = new Option<string>("--join") { Description = "Every initial server's --listen-addr, comma-separated; the same list on each.", HelpName = "list", Required = !single };
        var ranges = Options.Int("--initial-ranges", "User ranges created when the cluster is initialised (plus the system range).", 6, min: 1);
        var lease = Options.Duration("--lease-duration", "Range lease duration (renewed at half).", TimeSpan.FromSeconds(2));
        var injectDelay = Options.InjectDelayMs();
        var cmd = single
            ? new Command("start-single-node", "Start one server with one replica per range (the embedded default); it initialises itself.") { store, listen, http, ranges, lease, injectDelay }
            : new Command("start", "Start a server of a cluster; initialise the cluster once with `canopy init`.") { store, listen, http, join, ranges, lease, injectDelay };

        cmd.SetAction(async (parseResult, ct) =>
        {
            var listenText = parseResult.GetValue(listen)!;
            var options = new ServerOptions
            {
                StoreDirectory = Path.GetFullPath(parseResult.GetValue(store)!),
                ListenAddress = listenText,
                ListenEndPoint = Endpoints.Parse(listenText, "--listen-addr"),
                HttpEndPoint = Endpoints.Parse(parseResult.GetValue(http)!, "--http-addr"),
                Join = single ? [] : parseResult.GetValue(join)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                SingleNode = single,
                UserRanges = parseResult.GetValue(ranges),
                LeaseDuration = parseResult.GetValue(lease) ?? TimeSpan.FromSeconds(2),
                InjectedDelay = TimeSpan.FromMilliseconds(parseResult.GetValue(injectDelay)),
            };
            var output = parseResult.InvocationConfiguration.Output;
            var log = (string m) =>
            {
                lock (output)
                {
                    output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} {m}");
                }
            };
            CanopyServer server;
            try
            {
                server = await CanopyServer.StartAsync(options with { Log = log });
            }
            catch (ServerStartException ex)
            {
                throw new CliException(ex.Message, ExitCodes.Failure);
            }
            catch (StoreInUseException ex)
            {
                throw new CliException(ex.Message, ExitCodes.Failure);
            }

            await using (server)
            {
                log($"canopy node {server.NodeId} serving on {listenText} (clients and servers), http://{options.HttpEndPoint}; store {options.StoreDirectory}");
                if (options.InjectedDelay > TimeSpan.Zero)
                {
                    log($"benchmarks only: every message to another server is delayed by {options.InjectedDelay.TotalMilliseconds:0} ms (--inject-delay-ms)");
                }

                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                catch (OperationCanceledException)
                {
                    log("shutting down");
                }
            }

            return ExitCodes.Success;
        });

        return cmd;
    }
}
