import Foundation
import Synchronization
import Testing
@testable import X86

/// What two marking threads share: the bitmap and how far each has come.
private final class SharedLog: @unchecked Sendable {
    let words: UnsafeMutablePointer<UInt64>
    let count: Int
    let progress0 = Atomic<Int>(0)
    let progress1 = Atomic<Int>(0)

    func progress(_ side: Int) -> Int {
        side == 0 ? progress0.load(ordering: .acquiring) : progress1.load(ordering: .acquiring)
    }

    func reach(_ side: Int, _ round: Int) {
        if side == 0 { progress0.store(round, ordering: .releasing) } else { progress1.store(round, ordering: .releasing) }
    }

    init(count: Int) {
        self.count = count
        words = .allocate(capacity: count)
        words.initialize(repeating: 0, count: count)
    }

    deinit { words.deallocate() }
}

@Suite("X86 dirty log across vCPU threads")
struct DirtyLogTests {
    /// Two vCPUs' CPUs mark the pages of one bitmap word at the same time
    /// (one the even pages, the other the odd ones), a fresh word each
    /// round, the threads meeting at every round so that they race on the
    /// same word. A plain read-or-write loses bits here (the kernel uses an
    /// atomic set_bit_le for the same reason); every bit must be set.
    @Test func twoCPUsMarkingPagesOfOneWordLoseNoBit() {
        let rounds = 20_000
        let log = SharedLog(count: rounds)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 0x1000, alignment: 0x1000)
        defer { buffer.deallocate() }
        let cpus = (0..<2).map { _ in CPUOnThread(X86CPU(memory: PhysicalMemory(base: buffer, size: 0x1000))) }
        let done = DispatchGroup()
        for side in 0..<2 {
            done.enter()
            let box = cpus[side]
            let thread = Thread {
                for round in 0..<rounds {
                    // Meet the other thread at this round's word.
                    log.reach(side, round)
                    // On a loaded host the other thread may be off its core: wait
                    // for it only a little, so that the test ends in bounded time.
                    var spins = 0
                    while log.progress(1 - side) < round && spins < 1 << 14 { spins += 1 }
                    let word = UInt64(round) * 64
                    for _ in 0..<4 {
                        for bit in stride(from: UInt64(side), to: 64, by: 2) {
                            box.cpu.markDirty(log.words, (word + bit) << 12, 1)
                        }
                    }
                }
                log.reach(side, rounds)
                done.leave()
            }
            thread.start()
        }
        done.wait()
        let lost = (0..<rounds).reduce(0) { $0 + (~log.words[$1]).nonzeroBitCount }
        #expect(lost == 0, "\(lost) dirty bits lost in \(rounds) words")
    }

    /// An access across a page boundary marks both pages, in adjacent words too.
    @Test func accessAcrossAPageBoundaryMarksBothPages() {
        let log = SharedLog(count: 2)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 0x1000, alignment: 0x1000)
        defer { buffer.deallocate() }
        let cpu = X86CPU(memory: PhysicalMemory(base: buffer, size: 0x1000))
        cpu.markDirty(log.words, 63 << 12 | 0xFFE, 4)
        #expect(log.words[0] == 1 << 63)
        #expect(log.words[1] == 1)
    }
}
