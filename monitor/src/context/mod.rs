//! Context for events: the process table (pid → executable, uid, parent, start) and the flow table (socket → flow id and 4-tuple), both kept from the kernel's own events.

pub mod flows;
pub mod process_table;
