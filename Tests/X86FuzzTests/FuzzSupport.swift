import Foundation
import Glibc
import Synchronization

/// How many random programs each fuzz test runs (SWIFTKVM_FUZZ_ITERATIONS
/// for more), and the one seed to replay (SWIFTKVM_FUZZ_SEED).
enum FuzzConfiguration {
    static var iterations: Int { Int(ProcessInfo.processInfo.environment["SWIFTKVM_FUZZ_ITERATIONS"] ?? "") ?? 1500 }
    static var replaySeed: UInt64? {
        guard let text = ProcessInfo.processInfo.environment["SWIFTKVM_FUZZ_SEED"] else { return nil }
        return text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
    }

    /// The seeds a test runs: the replayed one, or `iterations` from its base.
    static func seeds(base: UInt64) -> [UInt64] {
        if let seed = replaySeed { return [seed] }
        return (0..<UInt64(iterations)).map { base &+ $0 &* 0x9E37_79B9 }
    }
}

/// What each running fuzz test is doing, where a crash handler can print
/// it: a fixed table of C strings, written before each program runs, so
/// that a SIGSEGV from a stray host access (the guard pages around guest
/// memory) names the seed that caused it.
enum CrashNotes {
    static let slots = 16
    static let slotSize = 192
    nonisolated(unsafe) static let table: UnsafeMutablePointer<CChar> = {
        let table = UnsafeMutablePointer<CChar>.allocate(capacity: slots * slotSize)
        table.initialize(repeating: 0, count: slots * slotSize)
        return table
    }()
    static let nextSlot = Atomic<Int>(0)

    /// Installs the handler once; returns a slot of the table.
    static func claimSlot() -> Int {
        _ = handlerInstalled
        return nextSlot.add(1, ordering: .relaxed).oldValue % slots
    }

    static func write(_ note: String, slot: Int) {
        let start = table + slot * slotSize
        let bytes = Array(note.utf8.prefix(slotSize - 2))
        for (index, byte) in bytes.enumerated() { start[index] = CChar(bitPattern: byte) }
        start[bytes.count] = 10  // newline
        start[bytes.count + 1] = 0
    }

    /// The actions the handler replaced (the Swift runtime's backtracer),
    /// indexed by signal number, to hand the fault on to.
    nonisolated(unsafe) static let previous: UnsafeMutablePointer<sigaction> = {
        let table = UnsafeMutablePointer<sigaction>.allocate(capacity: 64)
        table.initialize(repeating: sigaction(), count: 64)
        return table
    }()

    static let handlerInstalled: Bool = {
        for signal in [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { signal in
                // Only async-signal-safe calls: write(2) the notes, then put
                // back the previous action and let the fault recur under it.
                let header = "\nA fatal signal, while these X86 fuzz programs were running:\n"
                _ = header.withCString { Glibc.write(2, $0, strlen($0)) }
                for slot in 0..<CrashNotes.slots {
                    let start = CrashNotes.table + slot * CrashNotes.slotSize
                    if start[0] != 0 { _ = Glibc.write(2, start, strlen(start)) }
                }
                sigaction(signal, CrashNotes.previous + Int(signal), nil)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0
            sigaction(signal, &action, previous + Int(signal))
        }
        return true
    }()
}

/// Ends the process, loudly and with the seed, when a fuzz test makes no
/// progress for `seconds`: a hang inside X86 cannot be interrupted.
final class Watchdog: Sendable {
    let progress = Atomic<Int>(0)
    let finished = Atomic<Bool>(false)
    let note = Mutex<String>("")

    init(seconds: Int) {
        let thread = Thread { [self] in
            var last = -1
            var still = 0
            while !finished.load(ordering: .relaxed) {
                Thread.sleep(forTimeInterval: 1)
                let now = progress.load(ordering: .relaxed)
                still = now == last ? still + 1 : 0
                last = now
                if still >= seconds {
                    let text = note.withLock { $0 }
                    FileHandle.standardError.write(Data("X86 fuzzing: no progress for \(seconds) s: \(text)\n".utf8))
                    abort()
                }
            }
        }
        thread.start()
    }

    /// Records that the program described by `text` is about to run.
    func tick(_ text: String) {
        note.withLock { $0 = text }
        progress.add(1, ordering: .relaxed)
    }

    func stop() { finished.store(true, ordering: .relaxed) }
}
